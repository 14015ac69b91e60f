// `lrkc check`: every check lrkc can make without running anything.
import { parse } from "../language/parse.js";
import type { Diagnostic } from "../language/diagnostics.js";
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
    diagnostics.push(...parse(read.file).diagnostics);
  }
  const code = report(diagnostics, options);
  if (code === 0 && !options.json) {
    process.stderr.write(
      `checked ${paths.length} file${paths.length === 1 ? "" : "s"}: no problems\n`,
    );
  }
  return code;
}
