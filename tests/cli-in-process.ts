// `lrkc <args>` run in the test's own process: cli/main.ts's `main` (what bin/lrkc.js calls), with
// the working folder set and stdout and stderr collected. For tests about what a command says and
// its exit status, not about the process (signals, a second process, bin/lrkc.js itself): a child
// process costs a node start and a module load (about 0.3 s of CPU) per call. Calls must not
// overlap (they share process.cwd() and the output streams): await each.
import { main } from "../cli/main.js";

type Write = typeof process.stdout.write;

/** Collects what is written to `stream` instead of writing it; returns the function restoring it. */
function collect(stream: NodeJS.WriteStream, into: string[]): () => void {
  const original = stream.write;
  stream.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    into.push(typeof chunk === "string" ? chunk : Buffer.from(chunk).toString("utf8"));
    const callback = rest.find((r) => typeof r === "function") as (() => void) | undefined;
    callback?.();
    return true;
  }) as Write;
  return () => {
    stream.write = original;
  };
}

export async function lrkcInProcess(
  args: string[],
  cwd: string,
): Promise<{ status: number; stdout: string; stderr: string }> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const folder = process.cwd();
  const noColor = process.env["NO_COLOR"];
  // as in a child process whose stderr is a pipe: no colors
  process.env["NO_COLOR"] = "1";
  const restoreOut = collect(process.stdout, stdout);
  const restoreErr = collect(process.stderr, stderr);
  process.chdir(cwd);
  try {
    const status = await main([process.execPath, "lrkc", ...args]);
    return { status, stdout: stdout.join(""), stderr: stderr.join("") };
  } finally {
    process.chdir(folder);
    restoreOut();
    restoreErr();
    if (noColor === undefined) delete process.env["NO_COLOR"];
    else process.env["NO_COLOR"] = noColor;
  }
}
