// `lrkc check`: every check lrkc can make without running anything.
import { normalize, type Diagnostic } from "../language/diagnostics.js";
import { analyze } from "../compiler/pipeline.js";
import { prepare } from "../runtime/trainer.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";

export function checkCommand(paths: string[], options: ReportOptions): number {
  const diagnostics: Diagnostic[] = [];
  for (const path of paths) {
    const read = readSource(path);
    if ("diagnostic" in read) {
      diagnostics.push(read.diagnostic);
      continue;
    }
    // A program with train blocks is compiled through to its training step, one block at a time,
    // so that shape errors in forward functions, losses and updates are found too.
    const analysis = analyze(read.file);
    diagnostics.push(...analysis.diagnostics);
    if (analysis.diagnostics.some((d) => d.severity === "error")) continue;
    for (const { spec } of analysis.trains) {
      const prepared = prepare(read.file, { train: spec.decl.name.name });
      diagnostics.push(...prepared.diagnostics);
    }
  }
  // An imported file's problems are reported once, however many files import it.
  const unique = normalize(diagnostics);
  const code = report(unique, options);
  if (code === 0 && !options.json) {
    const warnings = unique.length;
    process.stderr.write(
      `checked ${paths.length} file${paths.length === 1 ? "" : "s"}: ${warnings ? `${warnings} warning${warnings === 1 ? "" : "s"}` : "no problems"}\n`,
    );
  }
  return code;
}
