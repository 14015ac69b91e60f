// `lrkc check`: every check lrkc can make without running anything.
import { check } from "../compiler/compile.js";
import { normalize, type Diagnostic } from "../language/diagnostics.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";
import { runOrDiagnostic } from "./train.js";

export function checkCommand(paths: string[], options: ReportOptions): number {
  const diagnostics: Diagnostic[] = [];
  for (const path of paths) {
    const read = readSource(path);
    if ("diagnostic" in read) {
      diagnostics.push(read.diagnostic);
      continue;
    }
    // A program with train blocks is compiled through to its training step, one block at a time,
    // so that shape errors in forward functions, losses and updates are found too; then each
    // block's data is opened (a missing corpus file is found here, not at step 1).
    const checked = check(read.file);
    diagnostics.push(...checked.diagnostics);
    for (const { program } of checked.compiled) {
      const run = runOrDiagnostic(program);
      if ("severity" in run) diagnostics.push(run);
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
