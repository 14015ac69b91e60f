// `lrkc build FILE --emit …`: show what the compiler makes of a program.
import { selectorListText } from "../language/format.js";
import { parse } from "../language/parse.js";
import { analyze } from "../compiler/pipeline.js";
import type { Placement, PlacedParam } from "../compiler/place.js";
import type { TrainSpec } from "../compiler/train.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";

export const emitKinds = ["ast", "params"] as const;
export type EmitKind = (typeof emitKinds)[number];

export interface BuildOptions extends ReportOptions {
  emit: EmitKind;
  train?: string;
}

export function buildCommand(path: string, options: BuildOptions): number {
  const read = readSource(path);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  if (options.emit === "ast") {
    const parsed = parse(read.file);
    if (parsed.diagnostics.length > 0) return report(parsed.diagnostics, options);
    process.stdout.write(JSON.stringify(parsed.program, null, 2) + "\n");
    return 0;
  }
  const analysis = analyze(read.file, { train: options.train, requireTrain: true });
  const code = report(analysis.diagnostics, options);
  if (code !== 0) return code;
  const { spec, placement } = analysis.trains[0]!;
  process.stdout.write(paramsTable(spec, placement));
  return 0;
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
