// The CPU baselines the benchmarks print beside lrk, run in a Python subprocess when one with the
// module is present (numpy's OpenBLAS for bench:matmul): the first of `python3` on PATH and the
// system's /usr/bin/python3 that imports it. Absent, the column is left out with a note.
import { spawnSync } from "node:child_process";

const CANDIDATES = ["python3", "/usr/bin/python3"];

/** The first Python interpreter that imports `module`, or undefined. */
export function pythonWith(module: string): string | undefined {
  for (const python of CANDIDATES) {
    const r = spawnSync(python, ["-c", `import ${module}`], { encoding: "utf8" });
    if (r.status === 0) return python;
  }
  return undefined;
}

/**
 * This process's environment for a yardstick subprocess, less `OPENBLAS_CORETYPE`: a core type
 * forced below the machine's (Haswell on an AVX-512 machine) runs OpenBLAS at about half speed,
 * which would flatter lrk in every comparison.
 */
export function yardstickEnvironment(): NodeJS.ProcessEnv {
  const { OPENBLAS_CORETYPE: _forced, ...rest } = process.env;
  return rest;
}

/**
 * Runs `script` with `python`, passing `input` as JSON on stdin, and parses the JSON its stdout
 * ends with. `env` adds to the environment (OMP_WAIT_POLICY=PASSIVE keeps idle OpenMP threads
 * from spinning, which on a shared machine steals the cores the timed threads need).
 */
export function runPython<T>(
  python: string,
  script: string,
  input: unknown,
  env: Record<string, string> = {},
): T {
  const r = spawnSync(python, ["-c", script], {
    input: JSON.stringify(input),
    encoding: "utf8",
    env: { ...yardstickEnvironment(), ...env },
    maxBuffer: 64 * 2 ** 20,
  });
  if (r.status !== 0) throw new Error(`${python} failed (exit ${r.status}):\n${r.stderr}`);
  const last = r.stdout.trim().split("\n").at(-1) ?? "";
  return JSON.parse(last) as T;
}

/**
 * OpenBLAS sgemm through numpy (`a @ b` of float32 matrices): GFLOP/s per shape, the median of
 * `runs` runs after two warm-ups; undefined when no Python has numpy.
 */
export function openblasGflops(
  shapes: readonly { m: number; n: number; k: number }[],
  runs = 15,
): { python: string; blas: string; gflops: number[] } | undefined {
  const python = pythonWith("numpy");
  if (!python) return undefined;
  const script = `
import json, sys, time
import numpy as np
shapes = json.load(sys.stdin)
rng = np.random.default_rng(1)
blas = "numpy " + np.__version__
try:
    cfg = np.show_config(mode="dicts")
    lib = cfg["Build Dependencies"]["blas"]
    blas += ", " + lib.get("name", "?") + " " + str(lib.get("version", ""))
except Exception:
    pass
out = []
for s in shapes["shapes"]:
    a = rng.standard_normal((s["m"], s["k"]), dtype=np.float32)
    b = rng.standard_normal((s["k"], s["n"]), dtype=np.float32)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(shapes["runs"]):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    times.sort()
    out.append(2 * s["m"] * s["n"] * s["k"] / times[len(times) // 2] / 1e9)
print(json.dumps({"blas": blas, "gflops": out}))
`;
  const r = runPython<{ blas: string; gflops: number[] }>(
    python,
    script,
    { shapes, runs },
    { OMP_WAIT_POLICY: "PASSIVE" },
  );
  return { python, ...r };
}
