// Files for the CLI: every way a path can fail, reading or writing, becomes a diagnostic.
import { error, type Diagnostic } from "../language/diagnostics.js";
import { isAbsolute } from "node:path";
import { readSourceFile, workingDirectory, type ReadResult } from "../compiler/modules.js";
import { writeErrorReason } from "../runtime/atomic.js";

export type { ReadResult };

/** A source file named on the command line (E0001, E0002). */
export function readSource(path: string): ReadResult {
  return readSourceFile(path, {
    directoryHelp: `to check every file in it, pass \`${path}/*.lrk\``,
  });
}

/** E0003: `what` (a file or folder lrkc writes for the user) could not be written. */
export function cannotWrite(path: string, e: unknown, help?: string): Diagnostic {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === "ENOENT" && !isAbsolute(path) && workingDirectory() === undefined)
    return error(
      "E0003",
      `cannot write \`${path}\`: the working directory no longer exists`,
      undefined,
      {
        help: "change to an existing directory (`cd`), or pass an absolute path",
      },
    );
  return error("E0003", `cannot write \`${path}\`: ${writeErrorReason(e)}`, undefined, {
    help:
      help ??
      (code === "ENOSPC" || code === "EDQUOT"
        ? "free some space on that disk, or write elsewhere"
        : code === "EROFS" || code === "EACCES" || code === "EPERM"
          ? "write to a folder you can write to"
          : code === "EEXIST" || code === "ENOTDIR"
            ? "a file stands where lrkc writes a folder: pass another path, or move the file away"
            : undefined),
  });
}
