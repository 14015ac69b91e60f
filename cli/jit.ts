// Compiling runs V8's baseline tiers only. A compile runs most of lrkc's code a few times at
// most, and V8's optimizing compiler (TurboFan) spends more on optimizing it — on a thread of its
// own, which on a small machine competes with the compile itself — than the optimized code saves
// before the compile ends: `lrkc build` of the 12-layer tiny LM (bench/compile.ts) took about
// 1.6 CPU seconds and 1.1 wall seconds with it, 1.0 and 0.9 without (2 cores; spec/performance.md).
// Training, evaluation and the interpreter run hot loops for long: TurboFan is back on for them.
import { setFlagsFromString } from "node:v8";

/**
 * The user chose V8's tiers themselves (node's own flags or NODE_OPTIONS): lrkc leaves them alone.
 */
const userChoseTiers = [...process.execArgv, ...(process.env["NODE_OPTIONS"] ?? "").split(/\s+/)]
  .map((a) => a.replace(/_/g, "-"))
  .some((a) => /^--(no-)?(turbofan|opt|jitless|maglev|sparkplug|always-sparkplug)\b/.test(a));

let depth = 0;

/**
 * `work()` (a compile: parsing, lowering, fusion, planning) run with V8's optimizing compiler
 * off; nested calls are allowed, and a promise keeps it off until it settles.
 */
export function compiling<T>(work: () => T): T {
  if (userChoseTiers) return work();
  if (depth++ === 0) setFlagsFromString("--no-turbofan");
  let result: T;
  try {
    result = work();
  } catch (e) {
    leave();
    throw e;
  }
  if (result instanceof Promise) return result.finally(leave) as T;
  leave();
  return result;
}

function leave(): void {
  if (--depth === 0) setFlagsFromString("--turbofan");
}
