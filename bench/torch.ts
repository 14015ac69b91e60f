// bench:train's PyTorch column: the same tiny LM LoRA step (bench/tiny_lm_torch.py) on the CPU,
// from lrk's initialized weights and on lrk's batches, in a Python subprocess with torch when one
// is present (bench/python.ts). Its first steps' losses are returned for the caller to compare
// with lrk's before the timing counts.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import type { Tensor } from "../compiler/program.js";
import { pythonWith } from "./python.js";

export interface TorchStepConfig {
  heads: number;
  /** LoRA's alpha / rank. */
  scale: number;
  lr: number;
  weightDecay: number;
  clip?: number;
}

export interface TorchResult {
  python: string;
  torch: string;
  threads: number;
  losses: number[];
  medianMs: number;
  fastestMs: number;
}

/**
 * Runs `check` + `warmup` + `runs` steps in PyTorch: `params` are lrk's initialized `param:`
 * tensors, `batch(i)` the batch of step i + 1 (i32 input and target, [B, T]), `lrScale(i)` its
 * schedule factor. Undefined when no Python has torch.
 */
export function torchSteps(options: {
  script: string;
  params: ReadonlyMap<string, Tensor>;
  batch: (i: number) => { input: Int32Array; target: Int32Array };
  batchShape: [number, number];
  lrScale: (i: number) => number;
  config: TorchStepConfig;
  check: number;
  warmup: number;
  runs: number;
}): TorchResult | undefined {
  const python = pythonWith("torch");
  if (!python) return undefined;
  const dir = mkdtempSync(join(tmpdir(), "lrk-bench-torch-"));
  try {
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
    const total = options.check + options.warmup + options.runs;
    const batches = Array.from({ length: total }, (_, i) => {
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
        lrScale: Array.from({ length: total }, (_, i) => options.lrScale(i)),
        check: options.check,
        warmup: options.warmup,
        runs: options.runs,
      }),
    );
    const r = spawnSync(python, [options.script, dir], {
      encoding: "utf8",
      env: { ...process.env, OMP_WAIT_POLICY: "PASSIVE" },
    });
    if (r.status !== 0) throw new Error(`${python} ${options.script} failed:\n${r.stderr}`);
    const result = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as Omit<TorchResult, "python">;
    return { python, ...result };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
