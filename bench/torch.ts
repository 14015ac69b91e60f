// bench:train's PyTorch column: the same tiny LM LoRA step (bench/tiny_lm_torch.py) on the CPU,
// from lrk's initialized weights and on lrk's batches, in a Python subprocess with torch when one
// is present (bench/python.ts), which then times one step per request, so that the caller can
// alternate them with its own. Its first steps' losses are returned to compare with lrk's first.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import type { Tensor } from "../compiler/program.js";
import { pythonWith, yardstickEnvironment } from "./python.js";

export interface TorchStepConfig {
  heads: number;
  /** LoRA's alpha / rank. */
  scale: number;
  lr: number;
  weightDecay: number;
  clip?: number;
}

/** A PyTorch process that has run the first steps and times one more step per `step` call. */
export interface TorchSession {
  python: string;
  torch: string;
  threads: number;
  /** The BLAS torch's matmuls run on ("OpenBLAS", "MKL", "reference BLAS", …). */
  blas: string;
  /** The losses of the first `check` steps. */
  losses: number[];
  /** Runs the step of batch i (optimizer step i + 1); resolves to its milliseconds. */
  step(i: number): Promise<number>;
  close(): void;
}

/**
 * Starts PyTorch on the tiny LM step: `params` are lrk's initialized `param:` tensors,
 * `batch(i)` the batch of step i + 1 (i32 input and target, [B, T]) for i < `steps`, `lrScale(i)`
 * its schedule factor; it runs the first `check` steps before it resolves. Undefined when no
 * Python has torch.
 */
export async function startTorch(options: {
  script: string;
  params: ReadonlyMap<string, Tensor>;
  batch: (i: number) => { input: Int32Array; target: Int32Array };
  batchShape: [number, number];
  lrScale: (i: number) => number;
  config: TorchStepConfig;
  check: number;
  steps: number;
}): Promise<TorchSession | undefined> {
  const python = pythonWith("torch");
  if (!python) return undefined;
  const dir = mkdtempSync(join(tmpdir(), "lrk-bench-torch-"));
  try {
    writeInputs(dir, options);
    const child = spawn(python, [options.script, dir], {
      env: { ...yardstickEnvironment(), OMP_WAIT_POLICY: "PASSIVE" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
    const next = async (): Promise<string> => {
      const r = await lines.next();
      if (r.done) throw new Error(`${python} ${options.script} ended:\n${stderr}`);
      return r.value;
    };
    const first = JSON.parse(await next()) as {
      losses: number[];
      threads: number;
      torch: string;
      blas: string;
    };
    return {
      python,
      ...first,
      async step(i) {
        child.stdin.write(`${i}\n`);
        return Number(await next());
      },
      close() {
        child.stdin.end("quit\n");
      },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** manifest.json and data.bin (bench/tiny_lm_torch.py reads them once it starts). */
function writeInputs(dir: string, options: Parameters<typeof startTorch>[0]): void {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  const add = (data: Float32Array | Int32Array) => {
    chunks.push(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    const at = offset;
    offset += data.byteLength;
    return at;
  };
  const params = [...options.params]
    .filter(([name]) => name.startsWith("param:"))
    .map(([name, t]) => ({ name, shape: t.shape, offset: add(Float32Array.from(t.data)) }));
  const batches = Array.from({ length: options.steps }, (_, i) => {
    const b = options.batch(i);
    return { input: add(b.input), target: add(b.target), count: b.input.length };
  });
  const data = new Uint8Array(offset);
  let at = 0;
  for (const c of chunks) {
    data.set(c, at);
    at += c.byteLength;
  }
  writeFileSync(join(dir, "data.bin"), data);
  writeFileSync(
    join(dir, "manifest.json"),
    JSON.stringify({
      config: options.config,
      params,
      batches,
      batchShape: options.batchShape,
      lrScale: Array.from({ length: options.steps }, (_, i) => options.lrScale(i)),
      check: options.check,
    }),
  );
}
