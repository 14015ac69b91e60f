// Adapters out and back in (issue 13, item 6): LoRA and DoRA on GPT-2's Conv1D layers (stored
// [in, out], PEFT's fan_in_fan_out), `lrkc export --peft` / `--merged`, and PEFT adapter folders
// loaded back as adapter initial values. The GPT-2 fixture is tests/fixtures/hf/gpt2
// (scripts/hf-fixtures.py).
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { initialize } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { root } from "./helpers.js";
import { expectTrainsAlike, prepare, type TestRun } from "./program-helpers.js";

const fixtures = join(root, "tests", "fixtures", "hf");
const gpt2 = join(fixtures, "gpt2");

/** The GPT-2 fixture with `adapt` rules, frozen base, trained on arithmetic (i32[B, 11] inputs). */
function gpt2Source(adapts: string, steps = 4): string {
  return `import std.models.{GPT2}
import std.optim.{adamw}
import std.adapters.{lora, dora, adalora, sora}

data sub = std.data.arithmetic(ops: "-", digits: 3, negative: false)

train tune {
  model GPT2(hf_config("${gpt2}"))
  data sub
  init "${gpt2}"
  loss cross_entropy(model(batch.input), batch.target)
${adapts}
  freeze transformer.**
  optimize adapters with adamw(lr: 1e-2)
  steps ${steps}
  batch 2
}
`;
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
