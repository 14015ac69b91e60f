// Every example in examples/ runs: a few training steps of each on the CPU reference interpreter,
// at a small batch. The fine-tunes start from a checkpoint the pretraining example writes, as a
// user would run them.
import { mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { writeSafetensors } from "../runtime/safetensors.js";
import { train } from "../runtime/trainer.js";
import { prepare } from "./program-helpers.js";
import { root } from "./helpers.js";

const examples = readdirSync(join(root, "examples")).filter((f) => f.endsWith(".lrk"));
const runnable = examples.filter((f) =>
  readFileSync(join(root, "examples", f), "utf8").includes("\ntrain "),
);
const dir = mkdtempSync(join(tmpdir(), "lrk-examples-"));
const pretrained = join(dir, "pretrain.safetensors");
/** NExt's three programs, each reading the files the one before writes (run in order below). */
const nextChain = ["next_lora_finetune.lrk", "next_predictor.lrk", "next_extrapolate.lrk"];

async function runExample(
  name: string,
  steps: number,
  edit: (text: string) => string = (text) => text,
): Promise<{ losses: number[]; store: Map<string, Tensor> }> {
  const path = join(root, "examples", name);
  // The fine-tunes load the pretraining example's weights; here, the ones this test wrote.
  const text = edit(
    readFileSync(path, "utf8").replace(/init "[^"]*"/, `init ${JSON.stringify(pretrained)}`),
  );
  const { run, diagnostics } = prepare(new SourceFile(path, text), { batch: 2, steps });
  expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
  // One held-out batch, not eight: the examples that evaluate still run the whole evaluation
  // path (the loss and, on arithmetic, greedy-decoded accuracy), which at eight batches took most
  // of this file's time (tiny_lm_pretrain: 17 s of evaluation against 3 s of training).
  return train(run!, new CpuDevice(), { steps, evalBatches: 1 });
}

describe("examples", () => {
  it("opens each with a one-line description", () => {
    for (const name of examples) {
      const first = readFileSync(join(root, "examples", name), "utf8").split("\n")[0]!;
      expect(first, name).toMatch(/^\/\/ \S.{10,}$/);
    }
  });

  it("has the tiny LM pretrain, LoRA, GaLore and AdaLoRA programs", () => {
    for (const name of [
      "tiny_lm_pretrain.lrk",
      "lora_finetune.lrk",
      "galore_pretrain.lrk",
      "adalora_budget.lrk",
    ])
      expect(runnable).toContain(name);
  });

  it("tiny_lm_pretrain.lrk trains (and writes the weights the fine-tunes start from)", async () => {
    const { losses, store } = await runExample("tiny_lm_pretrain.lrk", 2);
    expect(losses.every(Number.isFinite)).toBe(true);
    const params = new Map(
      [...store].filter(([k]) => k.startsWith("param:")).map(([k, t]) => [k.slice(6), t]),
    );
    writeSafetensors(pretrained, params);
  });

  for (const name of runnable.filter(
    (n) => n !== "tiny_lm_pretrain.lrk" && !nextChain.includes(n),
  )) {
    it(`${name} runs two steps`, async () => {
      const { losses } = await runExample(name, 2);
      expect(losses).toHaveLength(2);
      expect(losses.every(Number.isFinite), String(losses)).toBe(true);
    });
  }

  it("NExt's next_lora_finetune → next_predictor → next_extrapolate run, each on the last's files", async () => {
    const run = join(dir, "next-run.safetensors");
    const predictor = join(dir, "next-predictor.safetensors");
    const paths = (text: string) =>
      text
        .replaceAll('"../runs/next_lora_finetune/final.safetensors"', JSON.stringify(run))
        .replaceAll('"../runs/next_predictor/final.safetensors"', JSON.stringify(predictor));
    // a record every step and a horizon of 2, so that 4 steps make pairs
    const recorded = await runExample("next_lora_finetune.lrk", 4, (text) =>
      text.replace("alpha: 16)", "alpha: 16, period: 1, records: 4, horizon: 2)"),
    );
    expect(recorded.losses.every(Number.isFinite)).toBe(true);
    writeSafetensors(run, recorded.store);
    const trained = await runExample("next_predictor.lrk", 2, paths);
    expect(trained.losses.every(Number.isFinite), String(trained.losses)).toBe(true);
    writeSafetensors(predictor, trained.store);
    // the extrapolation loads the run as its `init` too
    const extrapolated = await runExample("next_extrapolate.lrk", 1, (text) =>
      paths(text.replace(/init "[^"]*"/, `init ${JSON.stringify(run)}`)).replace(
        "alpha: 16,",
        "alpha: 16,\n    records: 4,",
      ),
    );
    expect(extrapolated.losses.every(Number.isFinite)).toBe(true);
  });
});
