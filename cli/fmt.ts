// `lrkc fmt`: print, rewrite (--write) or verify (--check) the canonical formatting of files.
import { format } from "../language/format.js";
import { parse } from "../language/parse.js";
import { hasErrors, type Diagnostic } from "../language/diagnostics.js";
import { isFileSystemError, writeFileAtomic } from "../runtime/atomic.js";
import { cannotWrite, readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";

export interface FmtOptions extends ReportOptions {
  write?: boolean;
  check?: boolean;
}

export function fmtCommand(paths: string[], options: FmtOptions): number {
  const diagnostics: Diagnostic[] = [];
  const unformatted: string[] = [];
  const formattedFiles: { path: string; formatted: string }[] = [];
  for (const path of paths) {
    const read = readSource(path);
    if ("diagnostic" in read) {
      diagnostics.push(read.diagnostic);
      continue;
    }
    const parsed = parse(read.file);
    diagnostics.push(...parsed.diagnostics);
    // Never format around a syntax error: the output could drop what the parser skipped.
    if (hasErrors(parsed.diagnostics)) continue;
    const formatted = format(parsed.program, read.file);
    if (options.check) {
      if (formatted !== read.file.text) unformatted.push(path);
    } else if (options.write) {
      if (formatted !== read.file.text) {
        // Through a temporary file and a rename: a full disk must never truncate the source.
        try {
          writeFileAtomic(path, formatted);
        } catch (e) {
          if (!isFileSystemError(e)) throw e;
          diagnostics.push(
            cannotWrite(
              path,
              e,
              "the file is unchanged; free some space or fix the permissions and run again",
            ),
          );
        }
      }
    } else if (options.json) {
      formattedFiles.push({ path, formatted });
    } else {
      process.stdout.write(formatted);
    }
  }
  // --json: stdout is one JSON object, the formatted text (or the files --check found) included
  const code = report(
    diagnostics,
    options,
    options.check ? { unformatted } : options.write ? {} : { files: formattedFiles },
  );
  if (unformatted.length > 0 && options.json) return 1;
  if (unformatted.length > 0) {
    for (const path of unformatted) process.stderr.write(`${path}: not formatted\n`);
    process.stderr.write(
      `${unformatted.length} file${unformatted.length === 1 ? "" : "s"} would be reformatted: run \`lrkc fmt --write\` on ${unformatted.length === 1 ? "it" : "them"}\n`,
    );
    return 1;
  }
  return code;
}
