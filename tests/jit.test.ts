// cli/jit.ts: a compile runs without V8's optimizing compiler, and whatever runs after it (training,
// the interpreter) gets it back: after an error, after a promise settles, after nested compiles;
// and flags the user gave node are left alone. Observed through V8's own optimization status,
// in a child node with --allow-natives-syntax.
import { spawnSync } from "node:child_process";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";

const jit = resolve("dist/cli/jit.js");

/**
 * Runs `body` in a fresh node (extra `flags` first) where `optimized(label)` records whether a
 * freshly made hot function, run hot, was optimized by TurboFan; returns the records.
 */
function run(body: string, flags: string[] = []): Record<string, boolean> {
  const script = `
    const { compiling } = await import(${JSON.stringify(jit)});
    const status = new Function("f", "return %GetOptimizationStatus(f)");
    const seen = {};
    const optimized = (label) => {
      const hot = new Function("n", "let s = 0; for (let i = 0; i < n; i++) s += i % 7; return s;");
      for (let i = 0; i < 4; i++) hot(2e7);
      seen[label] = (status(hot) & 64) !== 0; // V8's kTurboFanned bit
    };
    ${body}
    console.log(JSON.stringify(seen));`;
  const r = spawnSync(
    process.execPath,
    [...flags, "--allow-natives-syntax", "--input-type=module", "-e", script],
    { encoding: "utf8" },
  );
  expect(r.stderr).toBe("");
  return JSON.parse(r.stdout) as Record<string, boolean>;
}

describe("compiling", () => {
  it("turns TurboFan off inside, and back on after, a throw and nesting included", () => {
    const seen = run(`
      optimized("before");
      compiling(() => { optimized("inside"); compiling(() => optimized("nested")); optimized("after nested"); });
      optimized("after");
      try { compiling(() => { throw new Error("x"); }); } catch {}
      optimized("after a throw");`);
    expect(seen).toEqual({
      before: true,
      inside: false,
      nested: false,
      "after nested": false,
      after: true,
      "after a throw": true,
    });
  });

  it("keeps it off until a promise settles", () => {
    const seen = run(`
      let settle;
      const pending = compiling(() => new Promise((r) => (settle = r)));
      optimized("pending");
      settle(1);
      await pending;
      optimized("settled");`);
    expect(seen).toEqual({ pending: false, settled: true });
  });

  it("leaves the tiers alone when node was given a tier flag", () => {
    expect(run(`compiling(() => optimized("inside"));`, ["--turbofan"])).toEqual({ inside: true });
    expect(run(`optimized("outside");`, ["--no-turbofan"])).toEqual({ outside: false });
  });
});
