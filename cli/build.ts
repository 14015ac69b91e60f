// `lrkc build FILE --emit …`: show what the compiler makes of a program.
import { selectorListText } from "../language/format.js";
import { parse } from "../language/parse.js";
import { analyze } from "../compiler/pipeline.js";
import type { Placement, PlacedParam } from "../compiler/place.js";
import type { TrainSpec } from "../compiler/train.js";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { error, hasErrors } from "../language/diagnostics.js";
import { printGraph } from "../compiler/ir.js";
import { BufferLimitError } from "../compiler/memory-plan.js";
import { planProgram, type Plan } from "../compiler/plan.js";
import type { Entry } from "../compiler/step.js";
import { formatBytes, memoryReport } from "../compiler/memory.js";
import { prepare, type Run } from "../runtime/trainer.js";
import { kernelFileName } from "../runtime/run-folder.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";

export const emitKinds = ["ast", "params", "ir", "memory", "plan", "wgsl"] as const;
export type EmitKind = (typeof emitKinds)[number];

export interface BuildOptions extends ReportOptions {
  emit: EmitKind;
  train?: string;
  /** For plan and wgsl: write plan.json and one .wgsl file per kernel into this folder. */
  out?: string;
}

/** WebGPU's default limits: a plan that fits them runs on any adapter. */
export const defaultLimits = {
  maxStorageBufferBindingSize: 134_217_728,
  maxBufferSize: 268_435_456,
  maxStorageBuffersPerShaderStage: 8,
};

export function buildCommand(path: string, options: BuildOptions): number {
  const read = readSource(path);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  if (options.emit === "ast") {
    const parsed = parse(read.file);
    if (hasErrors(parsed.diagnostics)) return report(parsed.diagnostics, options);
    process.stdout.write(JSON.stringify(parsed.program, null, 2) + "\n");
    return 0;
  }
  if (options.emit === "params") {
    const analysis = analyze(read.file, { train: options.train, requireTrain: true });
    const code = report(analysis.diagnostics, options);
    if (code !== 0) return code;
    const { spec, placement } = analysis.trains[0]!;
    process.stdout.write(paramsTable(spec, placement));
    return 0;
  }
  const { run, diagnostics } = prepare(read.file, { train: options.train });
  const code = report(diagnostics, options);
  if (!run || code !== 0) return code || 1;
  if (options.emit === "plan" || options.emit === "wgsl") return emitPlan(run, options);
  if (options.emit === "ir") {
    const step = run.step;
    const out = [
      `// training step of \`${run.spec.decl.name.name}\`: ${step.graph.nodes.length} nodes, loss = %${step.loss}`,
    ];
    out.push(printGraph(step.graph));
    for (const [key, entry] of step.variants) {
      out.push(
        `\n// entry ${key === "" ? "step" : `step with refresh every ${key}`}: ${entry.outputs.length} outputs`,
      );
      for (const o of entry.outputs) out.push(`//   ${o.name} = %${o.node}`);
    }
    process.stdout.write(out.join("\n") + "\n");
    return 0;
  }
  process.stdout.write(memoryTable(run));
  return 0;
}

function emitPlan(run: Run, options: BuildOptions): number {
  const entries: Record<string, Entry> = {};
  for (const [key, entry] of run.step.variants)
    entries[key === "" ? "step" : `step+refresh${key}`] = entry;
  let plan: Plan;
  try {
    plan = planProgram(run.step.graph, run.step.inputs, entries, defaultLimits);
  } catch (e) {
    if (e instanceof BufferLimitError) {
      return report(
        [
          error(
            "E0602",
            e.message,
            { file: run.spec.module.file, span: run.spec.decl.name.span },
            { help: "lower the batch size or the model's dimensions" },
          ),
        ],
        options,
      );
    }
    throw e;
  }
  if (options.out) {
    mkdirSync(options.out, { recursive: true });
    writeFileSync(join(options.out, "plan.json"), JSON.stringify(plan, null, 2) + "\n");
    plan.kernels.forEach((k) => writeFileSync(join(options.out!, kernelFileName(k)), k.wgsl));
    process.stderr.write(
      `wrote ${join(options.out, "plan.json")} and ${plan.kernels.length} .wgsl files\n`,
    );
    return 0;
  }
  if (options.emit === "wgsl") {
    process.stdout.write(
      plan.kernels.map((k) => `// ---- kernel ${k.id}: ${k.name}\n${k.wgsl}`).join("\n") + "\n",
    );
    return 0;
  }
  const lines = [
    `plan of train \`${run.spec.decl.name.name}\`: ${plan.kernels.length} kernels, ${plan.buffers.length} buffers, peak ${formatBytes(plan.peakBytes)}`,
  ];
  for (const [name, entry] of Object.entries(plan.entries)) {
    lines.push("", `entry ${name}: ${entry.dispatches.length} dispatches`);
    for (const id of entry.dispatches) {
      const k = plan.kernels[id]!;
      lines.push(
        `  ${String(id).padStart(4)}  ${k.kind.padEnd(8)} ${k.name}  grid [${k.dispatch.join(", ")}]${k.sourceLines.length ? `  (${k.sourceLines.slice(0, 2).join(", ")})` : ""}`,
      );
    }
  }
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

/** Peak bytes of the plain step's kernel plan (WebGPU default limits): what the device allocates. */
function plannedBytes(run: Run): number {
  try {
    return planProgram(
      run.step.graph,
      run.step.inputs,
      { step: run.step.variants.get("")! },
      defaultLimits,
    ).peakBytes;
  } catch (e) {
    if (e instanceof BufferLimitError) return NaN;
    throw e;
  }
}

function memoryTable(run: Run): string {
  const m = memoryReport(run.step);
  const rows: [string, number][] = [
    ["frozen weights", m.frozen],
    ["trainable parameters", m.trainable],
    ["gradients", m.gradients],
    ["optimizer state", m.optimizerState],
    [`activations (batch ${run.batch}, estimate)`, m.activations],
  ];
  const width = Math.max(
    ...rows.map((r) => r[0].length),
    "full fine-tuning with AdamW (same)".length,
  );
  const line = (label: string, n: number) =>
    `${label.padEnd(width)}  ${formatBytes(n).padStart(10)}  ${n.toLocaleString("en-US").padStart(14)} B`;
  return (
    [
      `memory of train \`${run.spec.decl.name.name}\` (${run.spec.module.file.path}), float32`,
      "",
      ...rows.map(([label, n]) => line(label, n)),
      "-".repeat(width + 30),
      line("total (unfused estimate)", m.total),
      line("full fine-tuning with AdamW (same)", m.fullAdamW),
      line("planned GPU buffers (fused step)", plannedBytes(run)),
      "",
      // Both totals are unfused estimates (every intermediate kept): comparable with each other,
      // not with the planned bytes, which count buffers after fusion and reuse.
      `before fusion, this step needs ${((100 * m.total) / m.fullAdamW).toFixed(1)}% of full fine-tuning's memory (estimates above)`,
      "",
      "optimizer state by tensor:",
      ...stateLines(run),
    ].join("\n") + "\n"
  );
}

/** `blocks.0.attn.q.weight  galore  P f32[128, 32] + inner.m f32[32, 128] + … = 40,960 elements`. */
function stateLines(run: Run): string[] {
  const byParam = new Map<string, { name: string; shape: readonly number[] }[]>();
  for (const s of run.step.states) {
    const [owner, ...rest] = s.name.split(":");
    const list = byParam.get(owner!) ?? [];
    list.push({ name: rest.join("."), shape: s.shape });
    byParam.set(owner!, list);
  }
  const lines: string[] = [];
  for (const p of run.step.trainable) {
    const states = byParam.get(p.param.path) ?? [];
    const elements = states.reduce((a, st) => a + st.shape.reduce((x, y) => x * y, 1), 0);
    const parts = states.map((st) => `${st.name} [${st.shape.join(", ")}]`).join(" + ") || "none";
    lines.push(
      `  ${p.param.path} [${p.param.shape.join(", ")}]  ${p.optimizer!.config.def.name.name}: ${parts} = ${elements.toLocaleString("en-US")} elements`,
    );
  }
  for (const [owner, states] of byParam) {
    if (run.step.trainable.some((p) => p.param.path === owner)) continue;
    lines.push(
      `  ${owner}: ${states.map((st) => `${st.name} [${st.shape.join(", ")}]`).join(" + ")}`,
    );
  }
  return lines;
}

function line(spec: TrainSpec, node: { span: { start: number } }): string {
  return `line ${spec.module.file.position(node.span.start).line}`;
}

function placedBy(spec: TrainSpec, p: PlacedParam, placement: Placement): string {
  const parts: string[] = [];
  if (p.origin === "adapter") {
    const applied = placement.adapters.find((a) => a.instance.params.includes(p.param))!;
    parts.push(
      `adapt ${selectorListText(applied.rule.target)} with ${applied.config.def.name.name} (${line(spec, applied.rule)})`,
    );
  }
  if (p.quantizedBy)
    parts.push(
      `quantize with ${p.quantizedBy.config.def.name.name} (${line(spec, p.quantizedBy.rule)})`,
    );
  if (p.frozenBy)
    parts.push(`freeze ${selectorListText(p.frozenBy.target)} (${line(spec, p.frozenBy)})`);
  if (p.optimizer)
    parts.push(
      `optimize with ${p.optimizer.config.def.name.name} (${line(spec, p.optimizer.rule)})`,
    );
  return parts.join("; ");
}

const count = (n: number) => n.toLocaleString("en-US");

/** Model parameters in definition order, each adapter's parameters right after its module's. */
function ordered(placement: Placement): PlacedParam[] {
  const out: PlacedParam[] = [];
  const byAdapterModule = new Map(placement.adapters.map((a) => [a.module.path, a]));
  const models = placement.params.filter((p) => p.origin === "model");
  models.forEach((p, i) => {
    out.push(p);
    const owner = p.param.owner.path;
    if (models[i + 1]?.param.owner.path === owner) return;
    const adapter = byAdapterModule.get(owner);
    if (adapter)
      out.push(...placement.params.filter((q) => adapter.instance.params.includes(q.param)));
  });
  return out;
}

export function paramsTable(spec: TrainSpec, placement: Placement): string {
  const rows = ordered(placement).map((p) => [
    p.param.path,
    `${p.param.dtype}[${p.param.shape.join(", ")}]`,
    p.quantizedBy ? "quantized" : p.trainable ? "trainable" : "frozen",
    placedBy(spec, p, placement),
  ]);
  const header = ["path", "type", "status", "placed by"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  const numel = (p: PlacedParam) => p.param.shape.reduce((a, b) => a * b, 1);
  const trainable = placement.params.filter((p) => p.trainable).reduce((a, p) => a + numel(p), 0);
  const total = placement.params.reduce((a, p) => a + numel(p), 0);
  const out = [
    `parameters of train \`${spec.decl.name.name}\` (${spec.module.file.path})`,
    "",
    fmt(header),
    ...rows.map(fmt),
    "",
    `${count(total)} parameters: ${count(trainable)} trainable (${((100 * trainable) / Math.max(1, total)).toFixed(2)}%), ${count(total - trainable)} frozen`,
  ];
  for (const b of placement.budgets) {
    out.push(
      `budget ${b.rule.resource.name} ${b.total} over ${selectorListText(b.rule.target)} by ${b.config.def.name.name}: ${b.adapted.length} modules`,
    );
  }
  return out.join("\n") + "\n";
}
