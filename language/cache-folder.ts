// Where lrk keeps what it caches between runs (parsed trees, the autotuner's choices):
// `$XDG_CACHE_HOME/lrk`, or `~/.cache/lrk` when XDG_CACHE_HOME is unset or empty. Read at each
// call, so that a process (a test) that changes the variable is followed. Deleting it is safe.
import { homedir } from "node:os";
import { join } from "node:path";

export function lrkCacheFolder(): string {
  return join(process.env["XDG_CACHE_HOME"] || join(homedir(), ".cache"), "lrk");
}
