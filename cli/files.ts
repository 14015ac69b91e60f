// Reading source files for the CLI: every way a path can fail becomes a diagnostic.
import { readFileSync, statSync } from "node:fs";
import { error, type Diagnostic } from "../language/diagnostics.js";
import { SourceFile } from "../language/source.js";

export type ReadResult = { file: SourceFile } | { diagnostic: Diagnostic };

const utf8 = new TextDecoder("utf-8", { fatal: true });

export function readSource(path: string): ReadResult {
  try {
    if (statSync(path).isDirectory()) {
      return {
        diagnostic: error("E0001", `\`${path}\` is a directory, not a .lrk file`, undefined, {
          help: `to check every file in it, pass \`${path}/*.lrk\``,
        }),
      };
    }
    const bytes = readFileSync(path);
    let text: string;
    try {
      text = utf8.decode(bytes);
    } catch {
      return {
        diagnostic: error("E0002", `\`${path}\` is not UTF-8 text`, undefined, {
          help: "lrk source files must be saved as UTF-8",
        }),
      };
    }
    return { file: new SourceFile(path, text) };
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT"
        ? "no such file"
        : code === "EACCES"
          ? "permission denied"
          : ((e as Error).message ?? String(e));
    return {
      diagnostic: error("E0001", `cannot read \`${path}\`: ${reason}`, undefined, {
        help: code === "ENOENT" ? "check the path" : undefined,
      }),
    };
  }
}
