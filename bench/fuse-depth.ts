// Compile time against model depth: a LoRA tiny LM at several depths, timing (CPU seconds of this
// process, so that other work on the machine does not count) the front end (`compile`) and
// planStep's phases one by one as `lrkc build --emit plan --device portable` runs them (8 storage
// buffers per kernel): fusion (once, cold, as in a build), the memory plan, the kernels' WGSL. Run one depth per process to compare cold times. The model is
// examples/lora_finetune.lrk (TinyLM at d 128, LoRA rank 8 on every linear) with `layers: N`, or
// with --small the LoRA fine-tune of the tests (TinyLM at d 16, LoRA rank 4 on q and v).
//
//   npm run build && node dist/bench/fuse-depth.js [LAYERS...] [--small] [--bindings N] [--dump FILE]
//
// Run it from the repository root. --dump writes every entry's fusion (groups, materialized and
// needed nodes) as JSON, to compare the fusion of two builds.
import { readFileSync, writeFileSync } from "node:fs";
import { compile } from "../compiler/compile.js";
import { assemblePlan, emitKernels, fuseEntries, planBuffers } from "../compiler/plan.js";
import { fuse } from "../compiler/fuse/index.js";
import { SourceFile } from "../language/source.js";

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const valued = new Set(["--bindings", "--dump"]);
const depths = args.filter((a, i) => /^\d+$/.test(a) && !valued.has(args[i - 1] ?? "")).map(Number);
const dump = option("--dump");
const bindings = Number(option("--bindings") ?? 8);

function program(layers: number): SourceFile {
  if (!args.includes("--small")) {
    const text = readFileSync("examples/lora_finetune.lrk", "utf8");
    const deep = text.replace(
      "model TinyLM(vocab: sub.vocab)",
      `model TinyLM(vocab: sub.vocab, layers: ${layers})`,
    );
    if (deep === text) throw new Error("examples/lora_finetune.lrk changed its model line");
    return new SourceFile("examples/lora_finetune.lrk", deep);
  }
  const tinyLm = readFileSync("examples/tiny_lm.lrk", "utf8").replace(
    "tok = Embedding(vocab, d)",
    "tok = Embedding(vocab, d, init_std: 0.3)",
  );
  return new SourceFile(
    `depth${layers}.lrk`,
    `${tinyLm}
import std.adapters.{lora}
import std.optim.{adamw}

data arith = std.data.arithmetic(ops: "+", digits: 1, seed: 3)

train depth {
  model TinyLM(vocab: arith.vocab, d: 16, layers: ${layers}, heads: 2, ctx: 16)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
  adapt blocks.*.attn.{q, v} with lora(rank: 4, alpha: 8)
  optimize adapters with adamw(lr: 1e-2)
  steps 10
  batch 4
  seed 1
}
`,
  );
}

const limits = {
  maxStorageBufferBindingSize: 2 ** 27,
  maxBufferSize: 2 ** 32,
  maxStorageBuffersPerShaderStage: bindings,
};
const cpu = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};
const seconds = (t0: number) => (cpu() - t0).toFixed(2);
const dumped: Record<string, unknown> = {};

for (const layers of depths.length ? depths : [8, 16, 32]) {
  let t0 = cpu();
  const { compiled, diagnostics } = compile(program(layers));
  if (!compiled) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  const tPrepare = seconds(t0);
  const step = compiled.program.step;
  const graph = step.graph;
  // planStep's phases one by one, as a build runs them: fusion once (cold: fuseEntries memoizes
  // per graph, and nothing fused this graph before), the memory plan, the kernels' WGSL.
  t0 = cpu();
  const fused = fuseEntries(step, limits);
  const tFuse = seconds(t0);
  const groups = fused.reduce((sum, e) => sum + e.groups.length, 0);
  if (dump)
    for (const { name, ...e } of step.entries) {
      // untimed: fuse's own result holds the materialized and needed nodes fuseEntries drops
      const f = fuse(
        graph,
        e.outputs.map((o) => o.node),
        { maxBindings: bindings },
      );
      dumped[`${layers}/${name}`] = {
        groups: f.groups,
        materialized: [...f.materialized].sort((p, q) => p - q),
        needed: f.needed,
      };
    }
  t0 = cpu();
  const buffers = planBuffers(step, fused, limits);
  const tBuffers = seconds(t0);
  t0 = cpu();
  const emitted = emitKernels(step, fused, buffers, { limits, features: [] });
  const shared = emitted.shared;
  const tEmit = seconds(t0);
  const plan = assemblePlan(step, buffers, emitted);
  console.log(
    `${layers} layers: ${graph.nodes.length} nodes, ${groups} groups; compile ${tPrepare} s; planStep: fuse ${tFuse} s, buffers ${tBuffers} s, kernels ${tEmit} s (${plan.kernels.length} kernels, ${shared} from another group's)`,
  );
}
if (dump) writeFileSync(dump, JSON.stringify(dumped));
