// `lrkc build FILE --emit …`: show what the compiler makes of a program.
import { join } from "node:path";
import { compile, planStep, type Compiled, type PlanTarget } from "../compiler/compile.js";
import { printGraph } from "../compiler/ir.js";
import { formatBytes, memoryReport } from "../compiler/memory.js";
import { pooledPlanBytes } from "../compiler/pooled-states.js";
import type { Placement, PlacedParam } from "../compiler/place.js";
import type { GraphProgram, Plan } from "../compiler/program.js";
import type { TrainSpec } from "../compiler/train.js";
import { error, hasErrors } from "../language/diagnostics.js";
import { selectorListText } from "../language/format.js";
import { parse } from "../language/parse.js";
import { planFiles } from "../runtime/run-folder.js";
import { failureDiagnostic } from "./failures.js";
import { isFileSystemError, makeFolder, writeFilesAtomic } from "../runtime/atomic.js";
import { cannotWrite, readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";
import { holdingSignals } from "./signals.js";
import { buildTarget, portableTarget, withMaxBinding } from "./target.js";

export const emitKinds = ["ast", "params", "ir", "memory", "plan", "wgsl"] as const;
export type EmitKind = (typeof emitKinds)[number];

export const buildDevices = ["auto", "webgpu", "portable"] as const;

export interface BuildOptions extends ReportOptions {
  emit: EmitKind;
  train?: string;
  /** For plan and wgsl: write plan.json and one .wgsl file per kernel into this folder. */
  out?: string;
  /** For plan and wgsl: the device to plan for (default auto, as `lrkc train`), or `portable`. */
  device?: string;
  /** commander's negated `--no-autotune` */
  autotune?: boolean;
  /** Store frozen tensors as f16 (compiler/half-storage.ts). */
  frozenF16?: boolean;
  /** `--max-binding`: plan storage bindings of at most this many bytes (parsed). */
  maxBinding?: number;
}

export async function buildCommand(path: string, options: BuildOptions): Promise<number> {
  if (options.out !== undefined && options.out.trim() === "")
    return report(
      [
        error(
          "E0003",
          "`--out` is empty: it needs a folder to write plan.json and the kernels into",
          undefined,
          {
            help: "pass a folder, such as `--out plan/`, or leave `--out` out to print to stdout",
          },
        ),
      ],
      options,
    );
  const read = readSource(path);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  if (options.emit === "ast") {
    const parsed = parse(read.file);
    if (hasErrors(parsed.diagnostics)) return report(parsed.diagnostics, options);
    process.stdout.write(JSON.stringify(parsed.program, null, 2) + "\n");
    return 0;
  }
  const { compiled, diagnostics } = compile(read.file, {
    train: options.train,
    ...(options.frozenF16 ? { frozenF16: true } : {}),
  });
  const code = report(diagnostics, options);
  if (!compiled || code !== 0) return code || 1;
  try {
    switch (options.emit) {
      case "params":
        process.stdout.write(paramsTable(compiled.spec, compiled.placement));
        return 0;
      case "plan":
      case "wgsl":
        return await emitPlan(compiled, options);
      case "ir":
        process.stdout.write(irText(compiled));
        return 0;
      case "memory":
        process.stdout.write(memoryTable(compiled, options.maxBinding));
        return 0;
    }
  } catch (e) {
    const failure = failureDiagnostic(e, { program: compiled.program });
    if (failure) return report([failure], options);
    throw e;
  }
}

function irText({ program }: Compiled): string {
  const step = program.step;
  const out = [
    `// training step of \`${program.name}\`: ${step.graph.nodes.length} nodes, loss = %${step.loss}`,
  ];
  out.push(printGraph(step.graph));
  for (const [key, entry] of step.variants) {
    out.push(
      `\n// entry ${key === "" ? "step" : `step with refresh every ${key}`}: ${entry.outputs.length} outputs`,
    );
    for (const o of entry.outputs) out.push(`//   ${o.name} = %${o.node}`);
  }
  for (const { entry, trigger, count } of step.actions) {
    const when =
      trigger === "every"
        ? `after steps ${count}, ${2 * count}, …`
        : count === 0
          ? "when the run starts, before step 1"
          : `after step ${count}`;
    out.push(
      `\n// entry ${entry.name}: the \`at\` actions ${when}: ${entry.outputs.length} outputs`,
    );
    for (const o of entry.outputs) out.push(`//   ${o.name} = %${o.node}`);
  }
  return out.join("\n") + "\n";
}

/** The step's plan for the target `lrkc train` would use (or `--device portable`). */
async function emitPlan({ program }: Compiled, options: BuildOptions): Promise<number> {
  const { target, name, close } = await buildTarget(
    options.device ?? "auto",
    [program.initProgram, program.step],
    {
      autotune: options.autotune !== false,
      log: (line) => process.stderr.write(`${line}\n`),
      ...(options.maxBinding !== undefined ? { maxBinding: options.maxBinding } : {}),
    },
  );
  let plan: Plan;
  try {
    plan = planStep(program.step, target);
  } finally {
    close();
  }
  if (options.out) return await writePlan(plan, options.out, name, options);
  if (options.emit === "wgsl") {
    process.stdout.write(
      plan.kernels.map((k) => `// ---- kernel ${k.id}: ${k.name}\n${k.wgsl}`).join("\n") + "\n",
    );
    return 0;
  }
  const lines = [
    `plan of train \`${program.name}\` for ${name}: ${plan.kernels.length} kernels, ${plan.buffers.length} buffers, peak ${formatBytes(plan.peakBytes)}`,
  ];
  for (const [entryName, entry] of Object.entries(plan.entries)) {
    lines.push("", `entry ${entryName}: ${entry.dispatches.length} dispatches`);
    for (const id of entry.dispatches) {
      const k = plan.kernels[id]!;
      lines.push(
        `  ${String(id).padStart(4)}  ${k.kind.padEnd(8)} ${k.name}  grid [${k.dispatch.join(", ")}]${k.sourceLines.length ? `  (${k.sourceLines.slice(0, 2).join(", ")})` : ""}`,
      );
    }
  }
  const split = splitLines(plan);
  if (split.length) lines.push("", ...split);
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

/**
 * The plan's buffers over one storage binding, each with its chunks (the views kernels bind:
 * compiler/memory-plan.ts); none when every tensor fits a binding.
 */
export function splitLines(plan: Plan): string[] {
  const split = plan.buffers.filter((b) => b.chunks);
  if (!split.length) return [];
  const limit = Math.max(...split.map((b) => b.chunks![0]!.bytes));
  return [
    `split across storage bindings (${formatBytes(limit)} a binding at most): ${split.length} buffer${split.length === 1 ? "" : "s"}`,
    ...split.map(
      (b) =>
        `  buffer ${b.id} ${b.role} ${b.names.join(", ")}: ${formatBytes(b.bytes)} in ${b.chunks!.length} bindings, bytes ${b.chunks!.map((c) => `[${c.offset}, ${c.offset + c.bytes})`).join(" ")}`,
    ),
  ];
}

/**
 * `--out`: one .wgsl per kernel, then plan.json (naming each kernel's file), written together by
 * writeFilesAtomic; a failure is E0003 (one while the files are staged, as a full disk, changes
 * none; a rename refused later leaves those before it in place). plan.json is renamed into place
 * last, so that a plan on disk never names kernels that are not written yet.
 */
async function writePlan(
  plan: Plan,
  out: string,
  target: string,
  options: BuildOptions,
): Promise<number> {
  let current = out;
  try {
    makeFolder(out);
    const files = planFiles(plan, out, join(out, "plan.json"));
    const { result: failed, signal } = await holdingSignals(() => writeFilesAtomic(files));
    if (signal) {
      process.stderr.write(
        `lrkc: stopped by ${signal} (after writing ${failed ? "nothing: the write failed" : `${join(out, "plan.json")} and its kernels in full`})\n`,
      );
      return 130;
    }
    if (failed) {
      current = failed.path;
      throw failed.error;
    }
  } catch (e) {
    if (!isFileSystemError(e)) throw e;
    const code = e.code;
    const diagnostic =
      current === out && code === "EEXIST"
        ? error("E0003", `cannot write into \`${out}\`: it is a file, not a folder`, undefined, {
            help: "pass a folder to `--out` (it is created if missing)",
          })
        : cannotWrite(
            current,
            e,
            code === "ENOTDIR" ? "`--out` must be a folder, not a path inside a file" : undefined,
          );
    return report([diagnostic], options);
  }
  process.stderr.write(
    `wrote ${join(out, "plan.json")} and ${plan.kernels.length} .wgsl files (for ${target})\n`,
  );
  return 0;
}

const halfStored = (step: GraphProgram) => step.inputs.some((i) => i.storage === "f16");

/**
 * The target `--emit memory` plans for: the portable one, with `shader-f16` when frozen weights
 * are stored as f16 (`--frozen-f16`), so that its planned buffers count them at 2 bytes.
 */
function memoryTarget(step: GraphProgram, maxBinding?: number): PlanTarget {
  const target = withMaxBinding(portableTarget, maxBinding);
  return halfStored(step) ? { ...target, features: ["shader-f16"] } : target;
}

/** Peak bytes of the step's kernel plan for a portable WebGPU target (NaN: over its limits). */
/** The fused step's plan for the portable target, or undefined when it is over WebGPU's limits. */
function portablePlan({ program }: Compiled, maxBinding?: number): Plan | undefined {
  try {
    return planStep(program.step, memoryTarget(program.step, maxBinding));
  } catch (e) {
    if (failureDiagnostic(e)) return undefined;
    throw e;
  }
}

/**
 * The plan's buffers by what they hold (every buffer exists while the plan runs); pooled states
 * (compiler/pooled-states.ts) count the most they hold at once, `pooled.held`, for their `full`.
 */
function plannedRows(
  plan: Plan | undefined,
  pooled?: { full: number; held: number },
): [string, number][] {
  if (!plan) return [["total", NaN]];
  const sum = (...roles: string[]) =>
    plan.buffers.filter((b) => roles.includes(b.role)).reduce((a, b) => a + b.bytes, 0);
  return [
    ["parameters", sum("param")],
    ["optimizer state", sum("state") - (pooled ? pooled.full - pooled.held : 0)],
    ["step outputs (updated values, loss)", sum("output")],
    ["activations and scratch (pooled, reused)", sum("activation", "scratch")],
    ["batch and scalars", sum("data", "scalar")],
  ];
}

function memoryTable(compiled: Compiled, maxBinding?: number): string {
  const { program } = compiled;
  const m = memoryReport(
    program.step,
    program.params.filter((p) => p.origin === "model"),
    program.steps,
  );
  const plan = portablePlan(compiled, maxBinding);
  const split = plan ? splitLines(plan) : [];
  const rows: [string, number][] = [
    ["frozen weights", m.frozen],
    ["trainable parameters", m.trainable],
    ["gradients", m.gradients],
    ["optimizer state", m.optimizerState],
    [`activations (batch ${program.batch}, every saved value)`, m.activations],
  ];
  const pooled = plan && pooledPlanBytes(program.step, plan.buffers, program.steps);
  const planned = plannedRows(plan, pooled);
  const plannedTotal = plan ? plan.peakBytes - (pooled ? pooled.full - pooled.held : 0) : NaN;
  const width = Math.max(
    ...[...rows, ...planned].map((r) => r[0].length),
    "full fine-tuning with AdamW (same)".length,
  );
  const line = (label: string, n: number) =>
    Number.isFinite(n)
      ? `${label.padEnd(width)}  ${formatBytes(n).padStart(10)}  ${n.toLocaleString("en-US").padStart(14)} B`
      : `${label.padEnd(width)}  over the device's limits (see \`lrkc build --emit plan\`)`;
  return (
    [
      `memory of train \`${program.name}\` (${program.file}), float32`,
      "",
      "before fusion (every intermediate the backward pass reads is kept):",
      ...rows.map(([label, n]) => line(label, n)),
      "-".repeat(width + 30),
      line("total", m.total),
      line("full fine-tuning with AdamW (same)", m.fullAdamW),
      `this step needs ${((100 * m.total) / m.fullAdamW).toFixed(1)}% of full fine-tuning's memory, before fusion`,
      "",
      `planned GPU buffers (the fused step, portable target${halfStored(compiled.program.step) ? " with shader-f16" : ""}; \`--emit plan\` lists them):`,
      ...planned.map(([label, n]) => line(label, n)),
      "-".repeat(width + 30),
      line("total", plannedTotal),
      ...(pooled
        ? [
            `(pooled optimizer states: the most the run's active tensors hold at once, ${formatBytes(pooled.held)}, of ${formatBytes(pooled.full)} were every tensor to keep them, plus a 16-byte placeholder per state not held; \`--emit plan\` lists every state's buffer)`,
          ]
        : []),
      ...(split.length ? ["", ...split] : []),
      "",
      "optimizer state by tensor:",
      ...stateLines(compiled),
    ].join("\n") + "\n"
  );
}

/** `blocks.0.attn.q.weight  galore  P f32[128, 32] + inner.m f32[32, 128] + … = 40,960 elements`. */
function stateLines({ program, placement }: Compiled): string[] {
  const byParam = new Map<string, { name: string; shape: readonly number[] }[]>();
  for (const s of program.step.states) {
    const [owner, ...rest] = s.name.split(":");
    const list = byParam.get(owner!) ?? [];
    // a pooled state is held only while its tensor is active (compiler/pooled-states.ts)
    list.push({ name: rest.join(".") + (s.pooled ? " (pooled)" : ""), shape: s.shape });
    byParam.set(owner!, list);
  }
  const lines: string[] = [];
  const elementsOf = (states: { shape: readonly number[] }[]) =>
    states.reduce((a, st) => a + st.shape.reduce((x, y) => x * y, 1), 0).toLocaleString("en-US");
  for (const p of placement.params.filter((q) => q.trainable)) {
    const joint = p.optimizer!.joint;
    if (joint) {
      // a joint optimizer keeps one set of states per adapted module, listed under its path
      lines.push(
        `  ${p.param.path} [${p.param.shape.join(", ")}]  ${p.optimizer!.config.def.name.name}: its states are kept per module, under ${joint.path} below`,
      );
      continue;
    }
    const states = byParam.get(p.param.path) ?? [];
    const elements = states.reduce((a, st) => a + st.shape.reduce((x, y) => x * y, 1), 0);
    const parts = states.map((st) => `${st.name} [${st.shape.join(", ")}]`).join(" + ") || "none";
    lines.push(
      `  ${p.param.path} [${p.param.shape.join(", ")}]  ${p.optimizer!.config.def.name.name}: ${parts} = ${elements.toLocaleString("en-US")} elements`,
    );
  }
  for (const [owner, states] of byParam) {
    if (program.step.trainable.includes(owner)) continue;
    lines.push(
      `  ${owner}: ${states.map((st) => `${st.name} [${st.shape.join(", ")}]`).join(" + ")} = ${elementsOf(states)} elements`,
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
