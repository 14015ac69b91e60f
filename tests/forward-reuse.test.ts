// The step's evaluation and prediction reuse the training loss's forward where no dropout tells
// the modes apart (Lowerer.keepingForwards): one copy of the model in the graph, not three. With
// dropout, the evaluation and prediction have a forward of their own, without the masks.
import { describe, expect, it } from "vitest";
import { dependencies, type Graph } from "../compiler/ir.js";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import { evaluate, initialize } from "../runtime/trainer.js";
import { loraTinyLmProgram } from "./helpers.js";
import { prepare, type TestRun } from "./program-helpers.js";

function compile(text: string): TestRun {
  const { run, diagnostics } = prepare(new SourceFile("forward_reuse.lrk", text), { batch: 4 });
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  return run;
}

/** The nodes of kind `kind` that `node` depends on. */
function nodesOf(graph: Graph, node: number, kind: string): number[] {
  return dependencies(graph, [node]).filter((id) => graph.node(id).op.kind === kind);
}

const plain = loraTinyLmProgram("forward_reuse", 3);
const dropped = plain.replace("lora(rank: 4, alpha: 8)", "lora(rank: 4, alpha: 8, dropout: 0.1)");

describe("the evaluation's and prediction's forward", () => {
  it("are the training loss's where no dropout runs: one copy of the model's matmuls", () => {
    expect(dropped).not.toBe(plain);
    const run = compile(plain);
    const { graph } = run.step;
    const loss = run.step.loss;
    const logits = run.step.predict!.outputs[0]!.node;
    const evalLoss = run.step.evaluate.outputs[0]!.node;
    // the prediction's logits are a node of the training loss's graph
    expect(dependencies(graph, [loss])).toContain(logits);
    expect(dependencies(graph, [evalLoss])).toContain(logits);
    // and every matmul of the evaluation is one the training loss computes
    const trained = new Set(nodesOf(graph, loss, "matmul"));
    const evaluated = nodesOf(graph, evalLoss, "matmul");
    expect(evaluated.length).toBeGreaterThan(0);
    expect(evaluated.filter((m) => !trained.has(m))).toEqual([]);
  });

  it("are their own, without the masks, where dropout runs", () => {
    const run = compile(dropped);
    const { graph } = run.step;
    const logits = run.step.predict!.outputs[0]!.node;
    const evalLoss = run.step.evaluate.outputs[0]!.node;
    expect(nodesOf(graph, run.step.loss, "random").length).toBeGreaterThan(0);
    expect(nodesOf(graph, evalLoss, "random")).toEqual([]);
    expect(nodesOf(graph, logits, "random")).toEqual([]);
    expect(dependencies(graph, [run.step.loss])).not.toContain(logits);
  });

  it("evaluate to the same loss with and without dropout in the program (dropout is off there)", async () => {
    const losses: number[] = [];
    for (const text of [plain, dropped]) {
      const run = compile(text);
      const device = new CpuDevice();
      const store = await initialize(run.program, device);
      // B starts at zero, which would hide the branch (and any dropout on its input): set it
      let seen = 0;
      for (const [name, t] of store)
        if (/\.B$/.test(name)) {
          seen++;
          store.set(name, { ...t, data: t.data.map((_, i) => Math.sin(i + 1) / 2) });
        }
      expect(seen).toBe(2);
      losses.push((await evaluate(run, device, store, 0)).loss);
    }
    expect(Number.isFinite(losses[0])).toBe(true);
    expect(losses[1]).toBeCloseTo(losses[0]!, 6);
  });
});
