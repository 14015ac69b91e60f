// A weight gradient summed over the batch, Σ_b xᵀ·dy, folded into one matmul (the batch into k)
// where x is the heads joined back (permute, reshape: a copy that only materialization decides)
// runs on the real WebGPU adapter as the interpreter computes it.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Builder } from "../compiler/builder.js";
import { planStep } from "../compiler/compile.js";
import type { GraphProgram, ProgramInput } from "../compiler/program.js";
import { deviceTarget } from "../cli/target.js";
import { evaluate, type Tensor } from "../runtime/interpreter.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { values } from "./helpers.js";

/** batch × heads × tokens × head size heads joined back, times dy [batch, tokens, n], summed over the batch. */
function joinedWeightGrad(batch: number, heads: number, tokens: number, size: number, n: number) {
  const b = new Builder();
  const inputs: ProgramInput[] = [];
  const feeds = new Map<string, Tensor>();
  const input = (name: string, shape: number[]) => {
    const node = b.input("param", name, shape);
    inputs.push({ name, node, role: "param", shape, dtype: "f32" });
    const count = shape.reduce((p, d) => p * d, 1);
    feeds.set(name, { shape, data: values(count, inputs.length) });
    return node;
  };
  const o = input("o", [batch, heads, tokens, size]);
  const dy = input("dy", [batch, tokens, n]);
  const x = b.reshape(b.permute(o, [0, 2, 1, 3]), [batch, tokens, heads * size]);
  const g = b.sum(b.matmul(x, dy, { transA: true }), 0);
  const program: GraphProgram = {
    graph: b.graph,
    inputs,
    entries: [{ name: "entry", outputs: [{ name: "g", node: g }] }],
  };
  return { program, feeds, g };
}

describe("Σ_b xᵀ·dy over heads joined back, folded into one matmul", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    device = await WebGpuDevice.open();
  });
  afterAll(() => device?.destroy());

  for (const [batch, heads, tokens, size, n] of [
    [5, 4, 9, 8, 8],
    [3, 2, 7, 6, 5],
  ] as const)
    it(`batch ${batch}, ${heads} heads × ${tokens} tokens × ${size}, n ${n}: 2 kernels, as the interpreter`, async () => {
      const { program, feeds, g } = joinedWeightGrad(batch, heads, tokens, size, n);
      const target = await deviceTarget(device, [program], { autotune: false });
      const plan = planStep(program, target);
      // the copy of the joined heads, then one matmul (no batched product and separate sum)
      expect(plan.entries.entry!.dispatches.length).toBe(2);
      device.load(program, plan);
      const got = (await device.run(program, program.entries[0]!, feeds)).get("g")!.data;
      const byNode = new Map(program.inputs.map((i) => [i.node, feeds.get(i.name)!]));
      const want = evaluate(program.graph, byNode, [g]).get(g)!.data;
      expect(got.length).toBe(want.length);
      let worst = 0;
      for (let j = 0; j < want.length; j++)
        worst = Math.max(worst, Math.abs(got[j]! - want[j]!) / (1 + Math.abs(want[j]!)));
      expect(worst).toBeLessThan(1e-4);
    });
});
