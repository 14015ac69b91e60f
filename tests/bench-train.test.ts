// The tfjs baseline of `npm run bench:train` (bench/tiny-lm-tfjs.ts) computes lrk's training step:
// from the same initialized weights and on the same batches, tfjs (its CPU backend) and lrk's
// reference interpreter give the same losses step by step and the same adapters and AdamW moments
// after. The benchmark itself checks the same on WebGPU before it times anything.
import * as tf from "@tensorflow/tfjs";
import { beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { lrFactor } from "../runtime/schedule.js";
import { initialize, train } from "../runtime/trainer.js";
import { prepare } from "./program-helpers.js";
import { tinyLmLoraTfjs } from "../bench/tiny-lm-tfjs.js";
import { tinyLmSource } from "./helpers.js";

const STEPS = 3;

// examples/lora_finetune.lrk's step (LoRA on every Linear of the blocks, AdamW, clipping, a
// schedule) on a TinyLM small enough for the interpreter; weight decay on, to check it too.
const program = `${tinyLmSource(0.3)}
import std.adapters.{lora}
import std.optim.{adamw}

data sub = std.data.arithmetic(ops: "-", digits: 2, seed: 8, negative: false)

train bench_check {
  model TinyLM(vocab: sub.vocab, d: 16, layers: 2, heads: 2, ctx: 16)
  data sub
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
  adapt blocks.*.attn.{q, k, v, o} with lora(rank: 4, alpha: 8)
  adapt blocks.*.mlp.{up, down} with lora(rank: 4, alpha: 8)
  optimize adapters with adamw(lr: 5e-2, weight_decay: 0.1)
  steps 20
  batch 8
  schedule cosine(warmup: 2, min_ratio: 0.1)
  clip 0.5
  seed 5
}
`;

beforeAll(async () => {
  await tf.setBackend("cpu");
  await tf.ready();
});

describe("bench:train's tfjs model", () => {
  it(`matches lrk's interpreter for ${STEPS} steps of a LoRA fine-tune of TinyLM`, async () => {
    const { run, diagnostics } = prepare(new SourceFile("bench_check.lrk", program));
    if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
    const cpu = new CpuDevice();
    const store = await initialize(run.program, cpu);
    const model = tinyLmLoraTfjs(tf, store, {
      heads: 2,
      scale: 8 / 4,
      lr: 5e-2,
      weightDecay: 0.1,
      clip: 0.5,
    });
    // (not `steps: STEPS`: that would also be the schedule's length)
    let done = 0;
    const ours = await train(run, cpu, {
      resume: { step: 0, store },
      shouldStop: () => ++done >= STEPS,
    });
    const [B, T] = run.data.fieldShapes(run.batch)["input"]!.shape as [number, number];
    const theirs: number[] = [];
    for (let s = 1; s <= STEPS; s++) {
      const batch = run.data.batch("train", s - 1, run.batch).fields;
      const loss = model.step(
        batch["input"]!.data as Int32Array,
        batch["target"]!.data as Int32Array,
        [B, T],
        s,
        lrFactor(run.program.schedule, s, run.program.steps),
      );
      theirs.push((await loss.data())[0]!);
      loss.dispose();
    }
    ours.losses.forEach((l, i) =>
      expect(Math.abs(l - theirs[i]!) / Math.abs(l), `loss at step ${i + 1}`).toBeLessThan(1e-4),
    );
    // the adapters moved (B starts at 0), and moved the same way
    expect(Math.abs(ours.losses[2]! - ours.losses[0]!)).toBeGreaterThan(1e-3);
    const read = await model.read();
    expect(read.size).toBe(2 * 6 * 3 * 2); // 2 layers × 6 Linears × (A, B) × (param, m, v)
    for (const [name, got] of read) {
      const want = ours.store.get(name)!.data;
      let scale = 0;
      let diff = 0;
      for (let i = 0; i < want.length; i++) {
        scale = Math.max(scale, Math.abs(want[i]!));
        diff = Math.max(diff, Math.abs(got[i]! - want[i]!));
      }
      expect(diff / scale, name).toBeLessThan(1e-3);
    }
    model.dispose();
  });
});
