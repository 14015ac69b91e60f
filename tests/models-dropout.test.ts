// Issue 13: std.models' dropouts from config.json (GPT-2's embd_pdrop, attn_pdrop and
// resid_pdrop, Llama's attention_dropout), applied while training only. The fixtures
// (tests/fixtures/hf, scripts/hf-fixtures.py) set them to 0; copies here set them otherwise.
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { RunFolder } from "../runtime/run-folder.js";
import { initialize, train } from "../runtime/trainer.js";
import { lrkcBin, root } from "./helpers.js";
import { prepare, type TestRun } from "./program-helpers.js";

const fixtures = join(root, "tests", "fixtures", "hf");

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "lrk-dropout-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A copy of fixture `folder` whose config.json is changed by `edit`. */
function copy(folder: string, name: string, edit: (config: Record<string, unknown>) => void) {
  const to = join(dir, name);
  cpSync(join(fixtures, folder), to, { recursive: true });
  const config = JSON.parse(readFileSync(join(to, "config.json"), "utf8"));
  edit(config);
  writeFileSync(join(to, "config.json"), JSON.stringify(config, null, 2));
  return to;
}

function source(model: "GPT2" | "Llama", folder: string, steps = 3): string {
  return `import std.models.{${model}}
import std.optim.{adamw}

train hf {
  model ${model}(hf_config("${folder}"))
  data std.data.arithmetic(ops: "-", digits: 3, negative: false)
  init "${folder}"
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-3)
  steps ${steps}
  batch 2
}
`;
}

function compiled(model: "GPT2" | "Llama", folder: string, steps = 3): TestRun {
  const { run, diagnostics } = prepare(
    new SourceFile(join(dir, `${model}.lrk`), source(model, folder, steps)),
  );
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

const losses = async (run: TestRun) => (await train(run, new CpuDevice({ float64: true }))).losses;

/** The training step's IR as `lrkc build --emit ir` prints it. */
function stepIr(model: "GPT2" | "Llama", folder: string): string {
  const file = join(dir, `${model}-ir.lrk`);
  writeFileSync(file, source(model, folder));
  const r = spawnSync(process.execPath, [lrkcBin, "build", file, "--emit", "ir"], {
    encoding: "utf8",
    timeout: 60_000,
  });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

const dropouts = {
  GPT2: (p: number) => (c: Record<string, unknown>) => {
    c["resid_pdrop"] = p;
    c["embd_pdrop"] = p;
    c["attn_pdrop"] = p;
  },
  Llama: (p: number) => (c: Record<string, unknown>) => {
    c["attention_dropout"] = p;
  },
};

describe("dropout in std.models, from config.json", () => {
  for (const model of ["GPT2", "Llama"] as const) {
    const folder = model === "GPT2" ? "gpt2" : "llama";

    it(`${model}: p > 0 drops while training (other losses, random masks in the step); p = 0 leaves the step as it was`, async () => {
      const dropped = copy(folder, `${folder}-p3`, dropouts[model](0.3));
      const zero = copy(folder, `${folder}-p0`, dropouts[model](0));
      const withDropout = await losses(compiled(model, dropped));
      const without = await losses(compiled(model, zero));
      expect(without).toEqual(await losses(compiled(model, join(fixtures, folder))));
      expect(Math.abs(withDropout[0]! - without[0]!)).toBeGreaterThan(1e-4);
      // the masks are new every step: the step's IR draws them; with p = 0 it draws nothing
      expect(stepIr(model, dropped)).toMatch(/random/);
      expect(stepIr(model, zero)).not.toMatch(/random/);
    }, 120_000);

    it(`${model}: evaluation is deterministic: p = 0.3 gives the fixture's PyTorch logits`, async () => {
      const dropped = copy(folder, `${folder}-eval`, dropouts[model](0.3));
      const run = compiled(model, dropped);
      const ref = JSON.parse(readFileSync(join(fixtures, folder, "reference.json"), "utf8")) as {
        sequences: number[][];
        logits: number[][][];
      };
      const store = await initialize(run.program, new CpuDevice({ float64: false }));
      const T = Number(run.step.inputs.find((i) => i.name === "batch.input")!.shape[1]);
      const input = new Int32Array(2 * T);
      ref.sequences.forEach((row, b) => input.set(row.slice(0, T), b * T));
      const logits = async () => {
        const feeds = new Map<string, Tensor>(store);
        feeds.set("batch.input", { shape: [2, T], data: input });
        const out = await new CpuDevice({ float64: false }).run(run.step, run.step.predict!, feeds);
        return out.get("logits")!;
      };
      const y = await logits();
      const V = Number(y.shape[2]);
      let diff = 0;
      let scale = 0;
      ref.logits.forEach((seq, b) =>
        seq.forEach((row, t) =>
          row.forEach((want, v) => {
            diff = Math.max(diff, Math.abs(Number(y.data[(b * T + t) * V + v]) - want));
            scale = Math.max(scale, Math.abs(want));
          }),
        ),
      );
      expect(diff / scale).toBeLessThan(1e-4);
      expect(Array.from((await logits()).data)).toEqual(Array.from(y.data));
    }, 120_000);
  }

  it("GPT-2 without the fields takes Hugging Face's defaults (0.1 each)", async () => {
    const missing = copy("gpt2", "gpt2-missing", (c) => {
      delete c["resid_pdrop"];
      delete c["embd_pdrop"];
      delete c["attn_pdrop"];
    });
    const explicit = copy("gpt2", "gpt2-p1", dropouts.GPT2(0.1));
    const zero = await losses(compiled("GPT2", join(fixtures, "gpt2"), 1));
    const defaults = await losses(compiled("GPT2", missing, 1));
    expect(defaults).toEqual(await losses(compiled("GPT2", explicit, 1)));
    expect(Math.abs(defaults[0]! - zero[0]!)).toBeGreaterThan(1e-5);
  }, 120_000);

  it("a run with dropout stopped and resumed gives exactly the uninterrupted losses", async () => {
    const dropped = copy("gpt2", "gpt2-resume", dropouts.GPT2(0.3));
    const run = compiled("GPT2", dropped, 4);
    const device = new CpuDevice({ float64: true });
    const whole = await train(run, device);
    const folder = new RunFolder(join(dir, "resume-run"));
    let steps = 0;
    await train(run, device, {
      shouldStop: () => ++steps === 2,
      onCheckpoint: (s, store) => folder.saveCheckpoint(s, store, {}, { floats: "F64" }),
    });
    const { step, store } = folder.loadCheckpoint(run.program);
    expect(step).toBe(2);
    const resumed = await train(run, device, { resume: { step, store } });
    expect(resumed.losses).toEqual(whole.losses.slice(2));
  }, 120_000);
});
