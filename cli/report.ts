// Printing diagnostics for people (stderr, coloured on a terminal) or tools (--json on stdout).
import { hasErrors, renderDiagnostics, toJson, type Diagnostic } from "../language/diagnostics.js";

export interface ReportOptions {
  json?: boolean;
}

/**
 * Prints the diagnostics and returns the exit code they call for: 1 if any is an error. With
 * --json, `extra` fields join the one JSON object on stdout (a command's own results).
 */
export function report(
  diagnostics: Diagnostic[],
  options: ReportOptions,
  extra: Record<string, unknown> = {},
): number {
  if (options.json) {
    const errors = diagnostics.filter((d) => d.severity === "error").length;
    process.stdout.write(
      JSON.stringify({ diagnostics: diagnostics.map(toJson), errors, ...extra }, null, 2) + "\n",
    );
  } else if (diagnostics.length > 0) {
    const color = process.stderr.isTTY === true && !process.env["NO_COLOR"];
    process.stderr.write(renderDiagnostics(diagnostics, { color }));
  }
  return hasErrors(diagnostics) ? 1 : 0;
}
