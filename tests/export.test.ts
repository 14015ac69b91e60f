// Adapters out and back in (issue 13, item 6): LoRA and DoRA on GPT-2's Conv1D layers (stored
// [in, out], PEFT's fan_in_fan_out), `lrkc export --peft` / `--merged`, and PEFT adapter folders
// loaded back as adapter initial values. The GPT-2 fixture is tests/fixtures/hf/gpt2
// (scripts/hf-fixtures.py).
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { compileMerge } from "../compiler/merge.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { PeftError, readPeftFolder, toPeft } from "../runtime/peft.js";
import {
  halfToNumber,
  numberToBfloat16,
  numberToHalf,
  readSafetensors,
  SafetensorsFile,
  writeSafetensors,
} from "../runtime/safetensors.js";
import { initialize, train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import {
  gpt2FixtureProgram,
  hfFixtures as fixtures,
  loraTinyLmProgram,
  lrkc as runLrkc,
  root,
} from "./helpers.js";
import { expectTrainsAlike, prepare, type TestRun } from "./program-helpers.js";
import { lrkcInProcess } from "./cli-in-process.js";

const gpt2 = join(fixtures, "gpt2");

/** The GPT-2 fixture with `adapt` rules, frozen base, trained on arithmetic (i32[B, 11] inputs). */
function gpt2Source(adapts: string, steps = 4, definitions = ""): string {
  return gpt2FixtureProgram({
    imports: `import std.adapters.{lora, dora, adalora}\n${definitions}`,
    data: `std.data.arithmetic(ops: "-", digits: 3, negative: false)`,
    dataName: "sub",
    rules: `${adapts}\n  freeze transformer.**\n  optimize adapters with adamw(lr: 1e-2)\n  steps ${steps}`,
  });
}

function compileRun(text: string, path = join(root, "tests", "export-main.lrk")): TestRun {
  const { run, diagnostics } = prepare(new SourceFile(path, text));
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

const LORA_AND_DORA = `  adapt transformer.h.*.attn.c_attn with lora(rank: 4, alpha: 8)
  adapt transformer.h.*.mlp.c_fc with dora(rank: 4)`;

describe("LoRA and DoRA on GPT-2's Conv1D layers", () => {
  it("compile: the adapters' shapes follow Conv1D(in, out), not its stored [in, out] weight", () => {
    const run = compileRun(gpt2Source(LORA_AND_DORA));
    const shape = (path: string) => run.program.params.find((p) => p.path === path)?.shape;
    expect(shape("transformer.h.0.attn.c_attn.weight")).toEqual([32, 96]);
    expect(shape("transformer.h.0.attn.c_attn.lora.A")).toEqual([4, 32]);
    expect(shape("transformer.h.0.attn.c_attn.lora.B")).toEqual([96, 4]);
    expect(shape("transformer.h.1.mlp.c_fc.dora.magnitude")).toEqual([64]);
  });

  it("DoRA's magnitude starts as the norm of each output's weights (a column of Conv1D's)", async () => {
    const run = compileRun(gpt2Source(LORA_AND_DORA));
    const store = await initialize(run.program, new CpuDevice({ float64: false }));
    const w = store.get("param:transformer.h.0.mlp.c_fc.weight")!; // [32, 64]
    const m = store.get("param:transformer.h.0.mlp.c_fc.dora.magnitude")!;
    for (const o of [0, 17, 63]) {
      let sum = 0;
      for (let i = 0; i < 32; i++) sum += Number(w.data[i * 64 + o]) ** 2;
      expect(Number(m.data[o])).toBeCloseTo(Math.sqrt(sum), 5);
    }
  });

  it("a selector reaching other layer types is still E0302, naming both types", () => {
    const { diagnostics } = prepare(
      new SourceFile(
        join(root, "tests", "export-main.lrk"),
        gpt2Source("  adapt transformer.h.0.ln_1 with lora(rank: 4)"),
      ),
    );
    expect(diagnostics.map((d) => `${d.code}: ${d.message}`)).toContain(
      "E0302: adapter `lora` applies to `Linear` or `Conv1D` modules, but `transformer.h.0.ln_1` is a `LayerNorm`",
    );
  });

  describe("on WebGPU", () => {
    let device: WebGpuDevice;
    beforeAll(async () => {
      device = await WebGpuDevice.open();
    }, 60_000);
    afterAll(() => device?.destroy());

    it("4 steps of LoRA (c_attn) + DoRA (c_fc) train alike on WebGPU and the CPU interpreter", async () => {
      const run = compileRun(gpt2Source(LORA_AND_DORA));
      const store = await expectTrainsAlike(device, run, 4, 1e-4);
      // the adapters did move (B starts at 0)
      const b = store.get("param:transformer.h.0.attn.c_attn.lora.B")!;
      expect(Array.from(b.data).some((v) => v !== 0)).toBe(true);
    }, 120_000);
  });
});

const lrkc = (...args: string[]) => runLrkc(args, { timeout: 120_000 });
/** `lrkc export` and `lrkc eval` in process (tests/cli-in-process.ts): their output is checked. */
const lrkcHere = (...args: string[]) => lrkcInProcess(args, process.cwd());

/** Logits [2, T, vocab] of the model with `store`, on two fixed token rows. */
async function logits(run: TestRun, store: ReadonlyMap<string, Tensor>): Promise<Float32Array> {
  const T = Number(run.step.inputs.find((i) => i.name === "batch.input")!.shape[1]);
  const input = new Int32Array(2 * T);
  [
    [1, 5, 9, 2, 7, 3, 3, 8],
    [4, 4, 0, 6, 2, 1, 9, 5],
  ].forEach((row, b) => input.set(row.slice(0, T), b * T));
  const feeds = new Map(store);
  feeds.set("batch.input", { shape: [2, T], data: input });
  const out = await new CpuDevice({ float64: false }).run(run.step, run.step.predict!, feeds);
  return Float32Array.from(out.get("logits")!.data);
}

/** The fine-tuned model's store: its program initialized, then the run's final weights over it. */
async function fineTuned(run: TestRun, weights: string): Promise<Map<string, Tensor>> {
  const store = await initialize(run.program, new CpuDevice({ float64: false }));
  for (const [name, t] of readSafetensors(weights).tensors)
    store.set(name.includes(":") ? name : `param:${name}`, t);
  return store;
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 0;
  a.forEach((v, i) => {
    diff = Math.max(diff, Math.abs(v - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  });
  return diff / scale;
}

/** GPT-2 without adapters, its weights from the checkpoint folder `init`. */
function plainSource(init: string): string {
  return gpt2Source("")
    .replace(/import std\.adapters[^\n]*\n/, "")
    .replace(`init "${gpt2}"`, `init "${init}"`)
    .replace("freeze transformer.**\n  optimize adapters", "optimize **");
}

const LORA_ONLY = `  adapt transformer.h.*.attn.c_attn with lora(rank: 4, alpha: 8)
  adapt transformer.h.*.mlp.c_proj with lora(rank: 4, alpha: 8)`;

describe("lrkc export", () => {
  let dir: string;
  /** A LoRA fine-tune of the GPT-2 fixture (c_attn and mlp.c_proj, 4 steps, CPU). */
  const trained = (name: string, adapts: string) => {
    const program = join(dir, `${name}.lrk`);
    writeFileSync(program, gpt2Source(adapts));
    const r = lrkc("train", program, "--device", "cpu", "--out", join(dir, name));
    expect(r.status, r.stderr).toBe(0);
    return { program, run: join(dir, name) };
  };
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-export-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("--merged: a plain GPT-2 loading the folder gives the fine-tuned model's logits", async () => {
    const { program, run } = trained(
      "mixed",
      `${LORA_AND_DORA}\n  adapt transformer.h.*.attn.c_proj with adalora(init_rank: 3)`,
    );
    const out = join(dir, "merged");
    const r = await lrkcHere("export", run, "--merged", out);
    expect(r.status, r.stderr).toBe(0);
    expect(readdirSync(out).sort()).toEqual(["config.json", "model.safetensors"]);
    expect(readFileSync(join(out, "config.json"), "utf8")).toBe(
      readFileSync(join(gpt2, "config.json"), "utf8"),
    );
    const file = readSafetensors(join(out, "model.safetensors"));
    expect([...file.tensors.keys()].some((k) => /lora|dora|adalora/.test(k))).toBe(false);
    expect(file.tensors.get("transformer.h.0.attn.c_attn.weight")!.shape).toEqual([32, 96]);
    const tuned = compileRun(readFileSync(program, "utf8"), program);
    const want = await logits(tuned, await fineTuned(tuned, join(run, "final.safetensors")));
    const plain = compileRun(plainSource(out), join(dir, "plain.lrk"));
    const cpu = new CpuDevice({ float64: false });
    const got = await logits(plain, await initialize(plain.program, cpu));
    expect(maxRelDiff(got, want)).toBeLessThan(1e-5);
    // and the merge did change the model (the fine-tune moved the adapters)
    const base = compileRun(plainSource(gpt2), join(dir, "base.lrk"));
    expect(
      maxRelDiff(await logits(base, await initialize(base.program, cpu)), want),
    ).toBeGreaterThan(1e-3);
  }, 120_000);

  it("--merged does not reread the base's weights: the run's final weights hold the whole model", async () => {
    const base = join(dir, "base-copy");
    cpSync(gpt2, base, { recursive: true });
    const program = join(dir, "moved.lrk");
    writeFileSync(
      program,
      gpt2Source("  adapt transformer.h.*.attn.c_attn with lora(rank: 2)", 1).replaceAll(
        `"${gpt2}"`,
        `"${base}"`,
      ),
    );
    const t = lrkc("train", program, "--device", "cpu", "--out", join(dir, "moved"));
    expect(t.status, t.stderr).toBe(0);
    rmSync(join(base, "model.safetensors")); // the base's weights moved away; config.json stays
    const out = join(dir, "merged-moved");
    const r = await lrkcHere("export", join(dir, "moved"), "--merged", out);
    expect(r.status, r.stderr).toBe(0);
    expect(readdirSync(out).sort()).toEqual(["config.json", "model.safetensors"]);
  }, 120_000);

  it("--peft: PEFT's key names and config fields, and the folder loads back to the same logits", async () => {
    const { program, run } = trained("lora", LORA_ONLY);
    const out = join(dir, "peft");
    const r = await lrkcHere("export", run, "--peft", out);
    expect(r.status, r.stderr).toBe(0);
    expect(readdirSync(out).sort()).toEqual(["adapter_config.json", "adapter_model.safetensors"]);
    const file = readSafetensors(join(out, "adapter_model.safetensors"));
    expect(file.metadata).toEqual({ format: "pt" });
    const keys = [...file.tensors.keys()].sort();
    expect(keys).toHaveLength(8);
    expect(keys.slice(0, 4)).toEqual([
      "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
      "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
      "base_model.model.transformer.h.0.mlp.c_proj.lora_A.weight",
      "base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight",
    ]);
    expect(file.tensors.get(keys[0]!)!.shape).toEqual([4, 32]); // [r, in]
    expect(file.tensors.get(keys[1]!)!.shape).toEqual([96, 4]); // [out, r]
    expect(file.tensors.get(keys[2]!)!.shape).toEqual([4, 64]);
    expect(file.tensors.get(keys[3]!)!.shape).toEqual([32, 4]);
    const config = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"));
    expect(config).toEqual({
      peft_type: "LORA",
      task_type: "CAUSAL_LM",
      base_model_name_or_path: gpt2,
      revision: null,
      inference_mode: true,
      r: 4,
      // `c_proj` also names attn.c_proj, which is not adapted: so full paths
      target_modules: [
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.attn.c_attn",
        "transformer.h.1.mlp.c_proj",
      ],
      lora_alpha: 8,
      lora_dropout: 0,
      fan_in_fan_out: true,
      bias: "none",
      use_rslora: false,
      modules_to_save: null,
      init_lora_weights: true,
      layers_to_transform: null,
      layers_pattern: null,
      rank_pattern: {},
      alpha_pattern: {},
      use_dora: false,
    });
    // back in: the folder's tensors as the program's adapters give the fine-tuned logits
    const tuned = compileRun(readFileSync(program, "utf8"), program);
    const want = await logits(tuned, await fineTuned(tuned, join(run, "final.safetensors")));
    const store = await initialize(tuned.program, new CpuDevice({ float64: false }));
    const loaded = readPeftFolder(out, tuned.program.params, (p) =>
      JSON.parse(readFileSync(p, "utf8")),
    );
    for (const [name, t] of loaded.tensors) store.set(name, t);
    expect(maxRelDiff(await logits(tuned, store), want)).toBeLessThan(1e-6);
  }, 120_000);

  it("the whole path: LoRA on JSONL (prompt masked) on WebGPU, then --merged and --peft give its logits", async () => {
    // issue 13's path as a user runs it: instruction data, a LoRA fine-tune on the GPU, exports
    const lines = [
      ...Array.from({ length: 8 }, () => ({ prompt: "the cat", completion: " sat on the mat." })),
      ...Array.from({ length: 8 }, () => ({ prompt: "hello", completion: " world" })),
    ];
    writeFileSync(join(dir, "tune.jsonl"), lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
    const program = join(dir, "jsonl.lrk");
    writeFileSync(
      program,
      gpt2Source(LORA_ONLY, 12).replace(
        'std.data.arithmetic(ops: "-", digits: 3, negative: false)',
        `std.data.jsonl("tune.jsonl", tokenizer: "${gpt2}", context: 12)`,
      ),
    );
    const run = join(dir, "jsonl");
    const t = lrkc("train", program, "--device", "webgpu", "--out", run);
    expect(t.status, t.stderr).toBe(0);
    const losses = readFileSync(join(run, "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { loss?: number })
      .flatMap((m) => (m.loss === undefined ? [] : [m.loss]));
    expect(losses.length).toBeGreaterThanOrEqual(12);
    expect(losses.at(-1)!).toBeLessThan(losses[0]!); // it learnt the completions
    const tuned = compileRun(readFileSync(program, "utf8"), program);
    const want = await logits(tuned, await fineTuned(tuned, join(run, "final.safetensors")));
    const cpu = new CpuDevice({ float64: false });
    // --merged: a plain GPT-2 from the folder is the fine-tuned model
    const merged = join(dir, "jsonl-merged");
    expect((await lrkcHere("export", run, "--merged", merged)).status).toBe(0);
    const plain = compileRun(plainSource(merged), join(dir, "plain-jsonl.lrk"));
    expect(
      maxRelDiff(await logits(plain, await initialize(plain.program, cpu)), want),
    ).toBeLessThan(1e-5);
    // --peft: the folder loads back as the program's adapters to the same logits
    const peft = join(dir, "jsonl-peft");
    expect((await lrkcHere("export", run, "--peft", peft)).status).toBe(0);
    const store = await initialize(tuned.program, cpu);
    const loaded = readPeftFolder(peft, tuned.program.params, (p) =>
      JSON.parse(readFileSync(p, "utf8")),
    );
    for (const [name, tensor] of loaded.tensors) store.set(name, tensor);
    expect(maxRelDiff(await logits(tuned, store), want)).toBeLessThan(1e-6);
    // and the fine-tune moved the model away from the base
    const base = compileRun(plainSource(gpt2), join(dir, "base-jsonl.lrk"));
    expect(
      maxRelDiff(await logits(base, await initialize(base.program, cpu)), want),
    ).toBeGreaterThan(1e-3);
  }, 240_000);

  it("--peft: short target_modules when the last names select exactly the adapted modules", async () => {
    const { run } = trained("attn", "  adapt transformer.h.*.attn.c_attn with lora(rank: 2)");
    const out = join(dir, "peft-attn");
    expect((await lrkcHere("export", run, "--peft", out)).status).toBe(0);
    const config = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"));
    expect(config.target_modules).toEqual(["c_attn"]);
    expect(config.r).toBe(2);
    expect(config.lora_alpha).toBe(2);
  }, 120_000);

  it("--peft refuses an adapter PEFT does not have (E0506), writing nothing", async () => {
    // a per-output gain: an adapter of the program's own, with a `merged` but no PEFT form
    const gain = `
adapter gain on Linear(in, out) or Conv1D(in, out) {
  param g: f32[out] = zeros
  forward(x: f32[..., in]) -> f32[..., out] = base(x) * (1 + g)
  if base.fan_in_fan_out {
    merged = base.weight * reshape(1 + g, [1, out])
  } else {
    merged = base.weight * reshape(1 + g, [out, 1])
  }
}
`;
    const program = join(dir, "gain.lrk");
    writeFileSync(program, gpt2Source("  adapt transformer.h.*.attn.c_attn with gain", 4, gain));
    expect(lrkc("train", program, "--device", "cpu", "--out", join(dir, "gain")).status).toBe(0);
    const run = join(dir, "gain");
    const out = join(dir, "peft-gain");
    const r = await lrkcHere("export", run, "--peft", out);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("error[E0506]: `gain` has no PEFT form");
    expect(r.stderr).toContain("--merged DIR");
    expect(r.stderr).not.toContain("bug in lrkc");
    expect(existsSync(join(out, "adapter_config.json"))).toBe(false);
    // the same run exports merged
    expect((await lrkcHere("export", run, "--merged", join(dir, "merged-gain"))).status).toBe(0);
  }, 120_000);

  it("a program edited since the run is refused (E0506) unless passed with --program", async () => {
    const { program, run } = trained(
      "edited",
      "  adapt transformer.h.*.attn.c_attn with lora(rank: 2)",
    );
    writeFileSync(
      program,
      readFileSync(program, "utf8").replace("lora(rank: 2)", "lora(rank: 2, alpha: 4)"),
    );
    const r = await lrkcHere("export", run, "--peft", join(dir, "peft-edited"));
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("changed since the run");
    expect(existsSync(join(dir, "peft-edited"))).toBe(false);
    const forced = await lrkcHere(
      "export",
      run,
      "--peft",
      join(dir, "peft-edited"),
      "--program",
      program,
    );
    expect(forced.status, forced.stderr).toBe(0);
    expect(
      JSON.parse(readFileSync(join(dir, "peft-edited", "adapter_config.json"), "utf8")).lora_alpha,
    ).toBe(4);
  }, 120_000);

  it("an export folder that cannot be written is a diagnostic (E0003), and leaves no temporary file", async () => {
    const { run } = trained("lora2", "  adapt transformer.h.*.attn.c_attn with lora(rank: 2)");
    const blocker = join(dir, "a-file");
    writeFileSync(blocker, "not a folder");
    const r = await lrkcHere("export", run, "--merged", join(blocker, "out"));
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("error[E0003]: cannot write");
    expect(r.stderr).not.toContain("bug in lrkc");
    // an existing export is replaced whole: an interrupted write never leaves a partial file
    const out = join(dir, "merged-again");
    expect((await lrkcHere("export", run, "--merged", out)).status).toBe(0);
    expect((await lrkcHere("export", run, "--merged", out)).status).toBe(0);
    expect(readdirSync(out).sort()).toEqual(["config.json", "model.safetensors"]);
  }, 120_000);

  it("back in: training writes adapters.safetensors, and a PEFT folder or it starts the adapters", async () => {
    const { program, run } = trained("back", LORA_ONLY);
    const adapters = readSafetensors(join(run, "adapters.safetensors"));
    expect([...adapters.tensors.keys()].sort()).toEqual([
      "transformer.h.0.attn.c_attn.lora.A",
      "transformer.h.0.attn.c_attn.lora.B",
      "transformer.h.0.mlp.c_proj.lora.A",
      "transformer.h.0.mlp.c_proj.lora.B",
      "transformer.h.1.attn.c_attn.lora.A",
      "transformer.h.1.attn.c_attn.lora.B",
      "transformer.h.1.mlp.c_proj.lora.A",
      "transformer.h.1.mlp.c_proj.lora.B",
    ]);
    const peft = join(dir, "peft-back");
    expect((await lrkcHere("export", run, "--peft", peft)).status).toBe(0);
    // train from them: the first step's loss is the fine-tuned model's, not the base's
    const first = (out: string, ...args: string[]) => {
      const r = lrkc("train", program, "--device", "cpu", "--steps", "1", "--out", out, ...args);
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n")[0]!)
        .loss as number;
    };
    const fresh = first(join(dir, "fresh"));
    const fromPeft = first(join(dir, "from-peft"), "--init-adapters", peft);
    expect(Math.abs(fromPeft - fresh)).toBeGreaterThan(1e-4);
    expect(
      first(join(dir, "from-file"), "--init-adapters", join(run, "adapters.safetensors")),
    ).toBe(fromPeft);
    // the same as starting in-process from the run's final adapters
    const tuned = compileRun(readFileSync(program, "utf8"), program);
    const final = new Map(
      [...readSafetensors(join(run, "final.safetensors")).tensors]
        .filter(([name]) => name.includes(".lora."))
        .map(([name, t]) => [`param:${name}`, t] as const),
    );
    const result = await train(tuned, new CpuDevice({ float64: false }), {
      steps: 1,
      adapters: final,
    });
    expect(Math.abs(result.losses[0]! - fromPeft) / fromPeft).toBeLessThan(1e-6);
  }, 240_000);

  it("--init-adapters refuses a PEFT adapter trained with another alpha or on other modules (E0502)", async () => {
    const { run } = trained("refused", LORA_ONLY);
    const peft = join(dir, "peft-refused");
    expect((await lrkcHere("export", run, "--peft", peft)).status).toBe(0);
    const otherAlpha = join(dir, "other-alpha.lrk");
    writeFileSync(otherAlpha, gpt2Source(LORA_ONLY.replaceAll("alpha: 8", "alpha: 16")));
    let r = await lrkcHere("eval", otherAlpha, "--device", "cpu", "--init-adapters", peft);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(
      "error[E0502]: `transformer.h.0.attn.c_attn` is adapted with `lora(alpha: 16)`, but the PEFT adapter in",
    );
    const fewer = join(dir, "fewer.lrk");
    writeFileSync(
      fewer,
      gpt2Source("  adapt transformer.h.*.attn.c_attn with lora(rank: 4, alpha: 8)"),
    );
    r = await lrkcHere("eval", fewer, "--device", "cpu", "--init-adapters", peft);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("also adapts modules this program does not");
    expect(r.stderr).not.toContain("bug in lrkc");
  }, 120_000);
});

describe("PEFT names for DoRA and AdaLoRA (runtime/peft.ts)", () => {
  const t = (...shape: number[]): Tensor => ({
    shape,
    data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.5),
  });
  const context = {
    modules: ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"],
    baseModel: "meta-llama/Llama-3.2-1B",
    taskType: "CAUSAL_LM",
    steps: 100,
  };

  it("PiSSA: [A; A0] and [B, -B0]; a residual that is not W - s·B0 A0 (the base changed) is refused", () => {
    const module = "model.layers.0.self_attn.q_proj";
    const weights = new Map([
      [`${module}.weight`, t(16, 16)],
      [`${module}.pissa.A`, { shape: [2, 16], data: new Float32Array(32).fill(0.25) }],
      [`${module}.pissa.B`, { shape: [16, 2], data: new Float32Array(32).fill(0.75) }],
    ]);
    const initial = new Map([
      [`${module}.pissa.A`, t(2, 16)],
      [`${module}.pissa.B`, t(16, 2)],
    ]);
    // s = alpha / rank = 1: W - s·B0 A0 = 0.5 - 2·0.25 = 0
    const residual = (v: number) =>
      new Map([
        [`${module}.pissa.residual`, { shape: [16, 16], data: new Float32Array(256).fill(v) }],
      ]);
    const adapted = [{ module, adapter: "pissa", args: { rank: 2, alpha: 2 }, fanInFanOut: false }];
    const { config, tensors } = toPeft(adapted, weights, {
      ...context,
      initial,
      buffers: residual(0),
    });
    expect(config["r"]).toBe(4);
    expect(config["lora_alpha"]).toBe(4);
    const A = tensors.get(`base_model.model.${module}.lora_A.weight`)!;
    const B = tensors.get(`base_model.model.${module}.lora_B.weight`)!;
    expect(A.shape).toEqual([4, 16]);
    expect([A.data[0], A.data[16 * 2]]).toEqual([0.25, 0.5]);
    expect(B.shape).toEqual([16, 4]);
    expect(Array.from(B.data.slice(0, 4))).toEqual([0.75, 0.75, -0.5, -0.5]);
    expect(() => toPeft(adapted, weights, { ...context, initial, buffers: residual(0.1) })).toThrow(
      /`model.layers.0.self_attn.q_proj`'s pissa residual is not its weight minus the adapter's initial product/,
    );
  });

  it("DoRA: lora_A/lora_B .weight and lora_magnitude_vector (no .weight), use_dora", () => {
    const weights = new Map([
      ["model.layers.0.self_attn.q_proj.dora.A", t(4, 16)],
      ["model.layers.0.self_attn.q_proj.dora.B", t(16, 4)],
      ["model.layers.0.self_attn.q_proj.dora.magnitude", t(16)],
    ]);
    const { config, tensors } = toPeft(
      [
        {
          module: "model.layers.0.self_attn.q_proj",
          adapter: "dora",
          args: { rank: 4, alpha: 4, dropout: 0.05 },
          fanInFanOut: false,
        },
      ],
      weights,
      context,
    );
    expect([...tensors.keys()].sort()).toEqual([
      "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
      "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
      "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
    ]);
    expect(config).toMatchObject({
      peft_type: "LORA",
      use_dora: true,
      r: 4,
      lora_alpha: 4,
      lora_dropout: 0.05,
      fan_in_fan_out: false,
      target_modules: ["q_proj"],
      base_model_name_or_path: "meta-llama/Llama-3.2-1B",
    });
  });

  it("AdaLoRA: lora_A, lora_B, lora_E [r, 1] without .weight; ADALORA config with init_r and total_step", () => {
    const weights = new Map([
      ["model.layers.0.self_attn.k_proj.adalora.Q", t(6, 16)],
      ["model.layers.0.self_attn.k_proj.adalora.P", t(8, 6)],
      ["model.layers.0.self_attn.k_proj.adalora.E", t(6)],
    ]);
    const { config, tensors } = toPeft(
      [
        {
          module: "model.layers.0.self_attn.k_proj",
          adapter: "adalora",
          args: { init_rank: 6, alpha: 8, orth_reg: 0.5, dropout: 0 },
          fanInFanOut: false,
        },
      ],
      weights,
      { ...context, budgetTotal: 4 },
    );
    const key = "base_model.model.model.layers.0.self_attn.k_proj.";
    expect([...tensors.keys()].sort()).toEqual([`${key}lora_A`, `${key}lora_B`, `${key}lora_E`]);
    expect(tensors.get(`${key}lora_E`)!.shape).toEqual([6, 1]);
    expect(tensors.get(`${key}lora_A`)!.shape).toEqual([6, 16]);
    expect(tensors.get(`${key}lora_B`)!.shape).toEqual([8, 6]);
    expect(config).toMatchObject({
      peft_type: "ADALORA",
      init_r: 6,
      target_r: 4,
      lora_alpha: 8,
      orth_reg_weight: 0.5,
      total_step: 100,
      rank_pattern: null,
      target_modules: ["k_proj"],
    });
  });

  it("mixed adapter kinds in one folder are refused", () => {
    const mk = (module: string, adapter: string) => ({
      module,
      adapter,
      args: { rank: 2, alpha: 2 },
      fanInFanOut: false,
    });
    expect(() =>
      toPeft(
        [
          mk("model.layers.0.self_attn.q_proj", "lora"),
          mk("model.layers.0.self_attn.k_proj", "dora"),
        ],
        new Map(),
        context,
      ),
    ).toThrow(PeftError);
  });
});

describe("PEFT LoRA on GPT-2 against PyTorch (scripts/hf-fixtures.py: gpt2-lora-peft)", () => {
  const folder = join(fixtures, "gpt2-lora-peft");
  const reference = JSON.parse(readFileSync(join(folder, "reference.json"), "utf8")) as {
    sequences: number[][];
    logits: number[][][];
  };
  const adapts = `  adapt transformer.h.*.attn.c_attn with lora(rank: 4, alpha: 8)
  adapt transformer.h.*.mlp.c_fc with lora(rank: 4, alpha: 8)`;

  /** max |got - ref| / max |ref| over the reference's 8 positions of both sequences. */
  async function error(run: TestRun, store: ReadonlyMap<string, Tensor>): Promise<number> {
    const T = Number(run.step.inputs.find((i) => i.name === "batch.input")!.shape[1]);
    const input = new Int32Array(2 * T);
    reference.sequences.forEach((row, b) => input.set(row, b * T));
    const feeds = new Map(store);
    feeds.set("batch.input", { shape: [2, T], data: input });
    const out = await new CpuDevice({ float64: false }).run(run.step, run.step.predict!, feeds);
    const y = out.get("logits")!;
    const V = Number(y.shape[2]);
    let diff = 0;
    let scale = 0;
    reference.logits.forEach((seq, b) =>
      seq.forEach((row, t) =>
        row.forEach((want, v) => {
          diff = Math.max(diff, Math.abs(Number(y.data[(b * T + t) * V + v]) - want));
          scale = Math.max(scale, Math.abs(want));
        }),
      ),
    );
    return diff / scale;
  }

  it("the PEFT folder loaded into lrk's lora on Conv1D gives PEFT's merged logits", async () => {
    const run = compileRun(gpt2Source(adapts));
    const store = await initialize(run.program, new CpuDevice({ float64: false }));
    const { tensors } = readPeftFolder(folder, run.program.params, (p) =>
      JSON.parse(readFileSync(p, "utf8")),
    );
    expect(tensors.size).toBe(8);
    for (const [name, t] of tensors) store.set(name, t);
    expect(await error(run, store)).toBeLessThan(1e-5);
  });

  it("lrk's merge of it (compiler/merge.ts) is PEFT's W + s·(B A)^T: a plain GPT-2 gives the same logits", async () => {
    const path = join(root, "tests", "export-main.lrk");
    const file = new SourceFile(path, gpt2Source(adapts));
    const run = compileRun(file.text, path);
    const cpu = new CpuDevice({ float64: false });
    const store = await initialize(run.program, cpu);
    const { tensors } = readPeftFolder(folder, run.program.params, (p) =>
      JSON.parse(readFileSync(p, "utf8")),
    );
    for (const [name, t] of tensors) store.set(name, t);
    const { merge, diagnostics } = compileMerge(file);
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    expect(merge!.weights.map((w) => w.weight)).toContain("transformer.h.1.mlp.c_fc.weight");
    const merged = await cpu.run(merge!, merge!.entry, store);
    const plain = compileRun(plainSource(gpt2), join(root, "tests", "export-plain.lrk"));
    const base = await initialize(plain.program, cpu);
    for (const w of merge!.weights) base.set(`param:${w.weight}`, merged.get(w.output)!);
    expect(await error(plain, base)).toBeLessThan(1e-5);
  });
});

describe("--merged in the source's dtype", () => {
  it("F16 and BF16 are rounded to nearest, ties to even", () => {
    expect(numberToHalf(1)).toBe(0x3c00);
    expect(numberToHalf(-2)).toBe(0xc000);
    expect(numberToHalf(65504)).toBe(0x7bff);
    expect(numberToHalf(0.1)).toBe(0x2e66);
    expect(numberToHalf(2 ** -24)).toBe(0x0001); // the smallest subnormal
    expect(numberToHalf(2 ** -26)).toBe(0); // below half of it
    expect(numberToHalf(1 + 2 ** -11)).toBe(0x3c00); // a tie: to the even neighbour
    expect(numberToHalf(1 + 3 * 2 ** -11)).toBe(0x3c02);
    for (const x of [0.3, -1.7e-3, 1234.5, 3e-6]) {
      const h = halfToNumber(numberToHalf(x));
      expect(Math.abs(h - x)).toBeLessThanOrEqual(Math.abs(x) * 2 ** -11 + 2 ** -25);
    }
    expect(numberToBfloat16(1)).toBe(0x3f80);
    expect(numberToBfloat16(-3.140625)).toBe(0xc049);
    expect(numberToBfloat16(1 + 2 ** -8)).toBe(0x3f80); // a tie: to even
    expect(numberToBfloat16(1 + 3 * 2 ** -8)).toBe(0x3f82);
  });

  it("a fine-tune of the BF16 fixture exports merged as BF16, with its config.json", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-export-bf16-"));
    try {
      const bf16 = join(fixtures, "gpt2-bf16");
      const program = join(dir, "bf16.lrk");
      writeFileSync(program, gpt2Source(LORA_ONLY).replaceAll(`"${gpt2}"`, `"${bf16}"`));
      const trainRun = lrkc("train", program, "--device", "cpu", "--out", join(dir, "run"));
      expect(trainRun.status, trainRun.stderr).toBe(0);
      const out = join(dir, "merged");
      const r = await lrkcHere("export", join(dir, "run"), "--merged", out);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).toContain("(BF16)");
      const file = SafetensorsFile.open(join(out, "model.safetensors"));
      const dtypes = new Set([...file.entries.values()].map((e) => e.dtype));
      file.close();
      expect(dtypes).toEqual(new Set(["BF16"]));
      expect(JSON.parse(readFileSync(join(out, "config.json"), "utf8")).torch_dtype).toBe(
        "bfloat16",
      );
      // a plain GPT-2 from it is the fine-tuned model, to BF16's precision
      const tuned = compileRun(readFileSync(program, "utf8"), program);
      const want = await logits(
        tuned,
        await fineTuned(tuned, join(dir, "run", "final.safetensors")),
      );
      const plain = compileRun(plainSource(out), join(dir, "plain.lrk"));
      const got = await logits(
        plain,
        await initialize(plain.program, new CpuDevice({ float64: false })),
      );
      expect(maxRelDiff(got, want)).toBeLessThan(3e-2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});

describe("lrkc eval --init-adapters (Linear layers: TinyLM on arithmetic)", () => {
  it("a PEFT export or adapters.safetensors evaluates as the run's final weights do", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-export-eval-"));
    try {
      const program = join(dir, "tiny.lrk");
      writeFileSync(program, loraTinyLmProgram("tiny", 20));
      const run = join(dir, "run");
      const t = lrkc("train", program, "--device", "cpu", "--out", run);
      expect(t.status, t.stderr).toBe(0);
      const peft = join(dir, "peft");
      expect((await lrkcHere("export", run, "--peft", peft)).status).toBe(0);
      const config = JSON.parse(readFileSync(join(peft, "adapter_config.json"), "utf8"));
      expect(config.fan_in_fan_out).toBe(false);
      expect(config.target_modules).toEqual(["q", "v"]);
      const loss = async (...args: string[]) => {
        const r = await lrkcHere(
          "eval",
          program,
          "--device",
          "cpu",
          "--batches",
          "2",
          "--json",
          ...args,
        );
        expect(r.status, r.stderr).toBe(0);
        return JSON.parse(r.stdout).result.loss as number;
      };
      const tuned = await loss("--weights", join(run, "final.safetensors"));
      expect(Math.abs(tuned - (await loss()))).toBeGreaterThan(1e-3); // the adapters matter
      expect(await loss("--init-adapters", peft)).toBeCloseTo(tuned, 6);
      expect(await loss("--init-adapters", join(run, "adapters.safetensors"))).toBeCloseTo(
        tuned,
        6,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});

// Issue 13: PiSSA and OLoRA (as LoRA of rank 2r on the original weight), Bone and RandLoRA in
// PEFT's format, on the Llama fixture's nn.Linear layers (PEFT's Bone wraps nn.Linear only).
describe("PEFT forms of PiSSA, OLoRA, Bone and RandLoRA (Llama fixture)", () => {
  const llama = join(fixtures, "llama");
  const llamaSource = (adapts: string, steps = 3) => `import std.models.{Llama}
import std.optim.{adamw}
import std.adapters.{lora, pissa, olora, bone, randlora}

train tune {
  model Llama(hf_config("${llama}"))
  data std.data.arithmetic(ops: "-", digits: 3, negative: false)
  init "${llama}"
  loss cross_entropy(model(batch.input), batch.target)
${adapts}
  freeze model.**
  freeze lm_head.*
  optimize adapters with adamw(lr: 1e-2)
  steps ${steps}
  batch 2
}
`;
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-export-forms-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Trains `adapts` 3 steps on the CPU, exports it with --peft: the folder and the run's logits. */
  async function exported(name: string, adapts: string) {
    const program = join(dir, `${name}.lrk`);
    writeFileSync(program, llamaSource(adapts));
    const t = lrkc("train", program, "--device", "cpu", "--out", join(dir, name));
    expect(t.status, t.stderr).toBe(0);
    const out = join(dir, `${name}-peft`);
    const r = await lrkcHere("export", join(dir, name), "--peft", out);
    expect(r.status, r.stderr).toBe(0);
    const run = compileRun(readFileSync(program, "utf8"), program);
    const want = await logits(run, await fineTuned(run, join(dir, name, "final.safetensors")));
    const file = readSafetensors(join(out, "adapter_model.safetensors"));
    const config = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"));
    return { out, run, want, file, config };
  }

  /** The logits of `adapts` with the PEFT folder's tensors as its adapters' starting values. */
  async function loadedBack(out: string, adapts: string, name: string) {
    const path = join(dir, `${name}.lrk`);
    const run = compileRun(llamaSource(adapts), path);
    const { tensors } = readPeftFolder(out, run.program.params, (p) =>
      JSON.parse(readFileSync(p, "utf8")),
    );
    const store = await initialize(run.program, new CpuDevice({ float64: false }), {
      adapters: tensors,
    });
    return { got: await logits(run, store), tensors };
  }

  const common = {
    task_type: "CAUSAL_LM",
    base_model_name_or_path: llama,
    revision: null,
    inference_mode: true,
  };

  for (const kind of ["pissa", "olora"])
    it(`${kind}: a LoRA of rank 2r, alpha 2α on the original weight ([A; A0], [B, -B0]) with the run's logits`, async () => {
      const adapts = `  adapt model.layers.*.self_attn.{q_proj, v_proj} with ${kind}(rank: 2, alpha: 4)`;
      const { out, want, file, config } = await exported(kind, adapts);
      expect([...file.tensors.keys()].sort().slice(0, 2)).toEqual([
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
      ]);
      expect(file.tensors.size).toBe(8);
      const A = file.tensors.get("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight")!;
      const B = file.tensors.get("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")!;
      expect(A.shape).toEqual([4, 32]); // [2r, in]
      expect(B.shape).toEqual([16, 4]); // [out, 2r]
      expect(config).toEqual({
        peft_type: "LORA",
        ...common,
        r: 4,
        target_modules: ["q_proj", "v_proj"],
        lora_alpha: 8,
        lora_dropout: 0,
        fan_in_fan_out: false,
        bias: "none",
        use_rslora: false,
        modules_to_save: null,
        init_lora_weights: true,
        layers_to_transform: null,
        layers_pattern: null,
        rank_pattern: {},
        alpha_pattern: {},
        use_dora: false,
      });
      // a plain LoRA of PEFT's rank and alpha on the original base is the fine-tuned model
      const lora = `  adapt model.layers.*.self_attn.{q_proj, v_proj} with lora(rank: 4, alpha: 8)`;
      const { got } = await loadedBack(out, lora, `${kind}-as-lora`);
      expect(maxRelDiff(got, want)).toBeLessThan(1e-5);
      // and the fine-tune moved it away from the base (where PiSSA and OLoRA start)
      const plain = compileRun(llamaSource(adapts), join(dir, `${kind}-fresh.lrk`));
      const cpu = new CpuDevice({ float64: false });
      const before = await logits(plain, await initialize(plain.program, cpu));
      expect(maxRelDiff(before, want)).toBeGreaterThan(1e-4);
    }, 120_000);

  it("bone: bone_block [r, out], BoneConfig's fields, and the folder loads back to the run's logits", async () => {
    const adapts = "  adapt model.layers.*.mlp.{up_proj, down_proj} with bone(rank: 8)";
    const { out, want, file, config } = await exported("bone", adapts);
    expect([...file.tensors.keys()].sort()).toEqual([
      "base_model.model.model.layers.0.mlp.down_proj.bone_block",
      "base_model.model.model.layers.0.mlp.up_proj.bone_block",
      "base_model.model.model.layers.1.mlp.down_proj.bone_block",
      "base_model.model.model.layers.1.mlp.up_proj.bone_block",
    ]);
    expect(
      file.tensors.get("base_model.model.model.layers.0.mlp.up_proj.bone_block")!.shape,
    ).toEqual([8, 64]);
    expect(config).toEqual({
      peft_type: "BONE",
      ...common,
      r: 8,
      target_modules: ["down_proj", "up_proj"],
      exclude_modules: null,
      init_weights: true,
      layers_to_transform: null,
      layers_pattern: null,
      bias: "none",
      modules_to_save: null,
    });
    const { got } = await loadedBack(out, adapts, "bone-back");
    expect(maxRelDiff(got, want)).toBeLessThan(1e-6);
    // PEFT 0.17's MiSS (Bone renamed; its default is Bone's update): `miss_block`, peft_type MISS
    const miss = join(dir, "miss");
    mkdirSync(miss);
    writeSafetensors(
      join(miss, "adapter_model.safetensors"),
      new Map([...file.tensors].map(([k, t]) => [k.replace(/bone_block$/, "miss_block"), t])),
      { format: "pt" },
    );
    writeFileSync(
      join(miss, "adapter_config.json"),
      JSON.stringify({ ...config, peft_type: "MISS", miss_dropout: 0, mini_r: 1 }),
    );
    expect(maxRelDiff((await loadedBack(miss, adapts, "miss-back")).got, want)).toBeLessThan(1e-6);
    // its "bat" variant computes another update: refused
    writeFileSync(
      join(miss, "adapter_config.json"),
      JSON.stringify({ ...config, peft_type: "MISS", init_weights: "bat" }),
    );
    await expect(loadedBack(miss, adapts, "bat-back")).rejects.toThrow(
      /is a PEFT `MISS` adapter of a variant lrk does not have/,
    );
    const fresh = compileRun(llamaSource(adapts), join(dir, "bone-fresh.lrk"));
    const before = await logits(
      fresh,
      await initialize(fresh.program, new CpuDevice({ float64: false })),
    );
    expect(maxRelDiff(before, want)).toBeGreaterThan(1e-4); // the blocks moved
  }, 120_000);

  it("randlora: λᵀ, γ and the shared bases (save_projection), RandLoraConfig's fields, loaded back", async () => {
    const adapts =
      "  adapt model.layers.*.self_attn.{q_proj, o_proj} with randlora(rank: 4, alpha: 8, seed: 3)";
    const { out, run, want, file, config } = await exported("randlora", adapts);
    const keys = [...file.tensors.keys()].sort();
    expect(keys.slice(0, 4)).toEqual([
      "base_model.model.model.layers.0.self_attn.o_proj.randlora_gamma",
      "base_model.model.model.layers.0.self_attn.o_proj.randlora_lambda",
      "base_model.model.model.layers.0.self_attn.q_proj.randlora_gamma",
      "base_model.model.model.layers.0.self_attn.q_proj.randlora_lambda",
    ]);
    expect(keys.slice(-2)).toEqual(["base_model.randlora_A", "base_model.randlora_B"]);
    expect(keys).toHaveLength(10);
    const shape = (k: string) => file.tensors.get(k)!.shape;
    expect(shape("base_model.model.model.layers.0.self_attn.q_proj.randlora_lambda")).toEqual([
      4, 8,
    ]);
    expect(shape("base_model.model.model.layers.0.self_attn.q_proj.randlora_gamma")).toEqual([
      8, 32,
    ]);
    expect(shape("base_model.randlora_A")).toEqual([4, 1, 32]);
    expect(shape("base_model.randlora_B")).toEqual([32, 8, 4]);
    expect(config).toEqual({
      peft_type: "RANDLORA",
      ...common,
      r: 4,
      target_modules: ["o_proj", "q_proj"],
      projection_prng_key: 3,
      save_projection: true,
      sparse: false,
      very_sparse: false,
      randlora_dropout: 0,
      fan_in_fan_out: false,
      randlora_alpha: 8,
      bias: "none",
      modules_to_save: null,
      init_weights: true,
      layers_to_transform: null,
      layers_pattern: null,
    });
    // PEFT's update from the file, computed as PEFT's get_delta_weight does, is lrk's merged delta
    const lamT = file.tensors.get(
      "base_model.model.model.layers.1.self_attn.o_proj.randlora_lambda",
    )!;
    const gamma = file.tensors.get(
      "base_model.model.model.layers.1.self_attn.o_proj.randlora_gamma",
    )!;
    const A3 = file.tensors.get("base_model.randlora_A")!;
    const B3 = file.tensors.get("base_model.randlora_B")!;
    const [r, N, n] = [4, 8, 32];
    const peftDelta = new Float64Array(n * n); // [out, in]; in == out == min == max
    for (let m = 0; m < r * N; m++) {
      const [i, k] = [Math.floor(m / N), m % N];
      const [kk, j] = [Math.floor(m / r), m % r];
      for (let o = 0; o < n; o++)
        for (let c = 0; c < n; c++)
          peftDelta[o * n + c]! +=
            Number(B3.data[(o * N + kk) * r + j]) *
            Number(lamT.data[i * N + k]) *
            Number(A3.data[i * n + c]) *
            Number(gamma.data[k * n + c]) *
            (8 / 4);
    }
    const store = await fineTuned(run, join(dir, "randlora", "final.safetensors"));
    const merge = compileMerge(new SourceFile(join(dir, "randlora.lrk"), llamaSource(adapts)), {});
    const merged = await new CpuDevice({ float64: false }).run(
      merge.merge!,
      merge.merge!.entry,
      store,
    );
    const w = merge.merge!.weights.find(
      (x) => x.weight === "model.layers.1.self_attn.o_proj.weight",
    )!;
    const lrkMerged = merged.get(w.output)!;
    const base = store.get("param:model.layers.1.self_attn.o_proj.weight")!;
    let diff = 0;
    let scale = 0;
    peftDelta.forEach((v, idx) => {
      const lrkDelta = Number(lrkMerged.data[idx]) - Number(base.data[idx]);
      diff = Math.max(diff, Math.abs(v - lrkDelta));
      scale = Math.max(scale, Math.abs(lrkDelta));
    });
    expect(scale).toBeGreaterThan(0);
    expect(diff / scale).toBeLessThan(1e-4);
    // back in: the bases come back as the program's (checked), λ and γ as its parameters
    const { got, tensors } = await loadedBack(out, adapts, "randlora-back");
    expect(tensors.has("buffer:model.layers.0.self_attn.q_proj.randlora.B")).toBe(true);
    expect(maxRelDiff(got, want)).toBeLessThan(1e-6);
  }, 120_000);

  it("randlora: bases other than the program's (PEFT's torch generator) are refused on the way in (E0502)", async () => {
    const adapts = "  adapt model.layers.*.self_attn.q_proj with randlora(rank: 4, seed: 5)";
    const { out } = await exported("randlora-other", adapts);
    const file = readSafetensors(join(out, "adapter_model.safetensors"));
    const A3 = file.tensors.get("base_model.randlora_A")!;
    (A3.data as Float32Array)[3] = Number(A3.data[3]) + 0.5;
    writeSafetensors(join(out, "adapter_model.safetensors"), file.tensors, { format: "pt" });
    const program = join(dir, "randlora-other.lrk");
    const r = await lrkcHere(
      "eval",
      program,
      "--device",
      "cpu",
      "--batches",
      "1",
      "--init-adapters",
      out,
    );
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(
      "error[E0502]: the adapter's fixed `model.layers.0.self_attn.q_proj.randlora.A` is not the one this program computes",
    );
    expect(r.stderr).not.toContain("bug in lrkc");
  }, 120_000);

  it("randlora on layers of other shapes, whose bases PEFT's one shared pair cannot hold, is E0506", async () => {
    const program = join(dir, "randlora-mixed.lrk");
    writeFileSync(
      program,
      llamaSource("  adapt model.layers.*.self_attn.{q_proj, k_proj} with randlora(rank: 4)", 1),
    );
    expect(lrkc("train", program, "--device", "cpu", "--out", join(dir, "mixed")).status).toBe(0);
    const r = await lrkcHere("export", join(dir, "mixed"), "--peft", join(dir, "mixed-peft"));
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(
      "error[E0506]: PEFT's RandLoRA shares one pair of random bases among all adapted layers",
    );
    expect(existsSync(join(dir, "mixed-peft"))).toBe(false);
  }, 120_000);
});

describe("PEFT RandLoRA on Llama against PyTorch (scripts/hf-fixtures.py: llama-randlora-peft)", () => {
  const folder = join(fixtures, "llama-randlora-peft");
  const llama = join(fixtures, "llama");
  const adapts =
    "  adapt model.layers.*.self_attn.{q_proj, v_proj} with randlora(rank: 4, alpha: 8)";
  const text = `import std.models.{Llama}
import std.optim.{adamw}
import std.adapters.{randlora}

train tune {
  model Llama(hf_config("${llama}"))
  data std.data.arithmetic(ops: "-", digits: 3, negative: false)
  init "${llama}"
  loss cross_entropy(model(batch.input), batch.target)
${adapts}
  freeze model.**
  freeze lm_head.*
  optimize adapters with adamw(lr: 1e-2)
  steps 1
  batch 2
}
`;

  it("its bases (F16, shared, sliced per layer: q_proj [32, 32], v_proj [16, 32]) map to lrk's layout: PEFT's merged logits", async () => {
    const run = compileRun(text, join(root, "tests", "randlora-peft.lrk"));
    const { tensors } = readPeftFolder(folder, run.program.params, (p) =>
      JSON.parse(readFileSync(p, "utf8")),
    );
    expect(tensors.get("buffer:model.layers.0.self_attn.v_proj.randlora.B")!.shape).toEqual([
      32, 16,
    ]);
    // the bases set directly (as a program drawing exactly these would have them)
    const store = await initialize(run.program, new CpuDevice({ float64: false }));
    const reference = JSON.parse(readFileSync(join(folder, "reference.json"), "utf8")) as {
      sequences: number[][];
      logits: number[][][];
    };
    const T = Number(run.step.inputs.find((i) => i.name === "batch.input")!.shape[1]);
    const input = new Int32Array(2 * T);
    reference.sequences.forEach((row, b) => input.set(row, b * T));
    /** max |logits - reference| / max |reference| */
    const error = async () => {
      const feeds = new Map(store);
      feeds.set("batch.input", { shape: [2, T], data: input });
      const device = new CpuDevice({ float64: false });
      const y = (await device.run(run.step, run.step.predict!, feeds)).get("logits")!;
      const V = Number(y.shape[2]);
      let diff = 0;
      let scale = 0;
      reference.logits.forEach((seq, b) =>
        seq.forEach((row, t) =>
          row.forEach((want, v) => {
            diff = Math.max(diff, Math.abs(Number(y.data[(b * T + t) * V + v]) - want));
            scale = Math.max(scale, Math.abs(want));
          }),
        ),
      );
      return diff / scale;
    };
    expect(await error()).toBeGreaterThan(1e-2); // the adapter matters (λ starts at 0)
    for (const [name, t] of tensors) store.set(name, t);
    expect(await error()).toBeLessThan(1e-4);
  }, 120_000);

  it("as --init-adapters it is refused: PEFT drew its bases with torch's generator (E0502)", async () => {
    const program = join(tmpdir(), `lrk-randlora-peft-${process.pid}.lrk`);
    writeFileSync(program, text);
    try {
      const r = await lrkcHere(
        "eval",
        program,
        "--device",
        "cpu",
        "--batches",
        "1",
        "--init-adapters",
        folder,
      );
      expect(r.status).toBe(1);
      expect(r.stderr).toContain("error[E0502]: the adapter's fixed `model.layers.0.self_attn.");
      expect(r.stderr).toContain("is not the one this program computes");
      expect(r.stderr).not.toContain("bug in lrkc");
    } finally {
      rmSync(program, { force: true });
    }
  }, 120_000);
});
