// The README's main job (`npm start`): pretrain the tiny transformer on 2-digit addition, LoRA-
// fine-tune it on 2-digit subtraction, then print held-out exact-match accuracy before and after
// the fine-tune and the GPU memory lrk's plan uses for one LoRA step beside full fine-tuning.
//
//   npm start [-- --skip-pretrain] [--device auto|webgpu|cpu] [--runs DIR] [--steps N --batch N]
//             [--no-autotune]
//
// --skip-pretrain reuses an earlier pretraining run; --steps and --batch override both runs' (for
// a quick look, and the test of this script).
// Each run is an ordinary `lrkc train` of a file in examples/, so everything here can be redone
// by hand; the run folders (metrics, checkpoints, curves, kernels) land in runs/.
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { compile as compileFile, planStep } from "../compiler/compile.js";
import { formatBytes } from "../compiler/memory.js";
import type { TrainProgram } from "../compiler/program.js";
import { portableTarget } from "../cli/target.js";
import { SourceFile } from "../language/source.js";
import { RunFolder } from "../runtime/run-folder.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const device = option("--device") ?? "auto";
const runsDir = option("--runs") ?? "runs";
const overrides = [
  ...["--steps", "--batch"].flatMap((o) => (option(o) ? [o, option(o)!] : [])),
  ...(args.includes("--no-autotune") ? ["--no-autotune"] : []),
];

const PRETRAIN = "examples/tiny_lm_pretrain.lrk";
const FINETUNE = "examples/lora_finetune.lrk";
const FULL = "examples/full_finetune.lrk";
const runs = {
  pretrain: join(runsDir, "tiny_lm_pretrain"),
  finetune: join(runsDir, "lora_finetune"),
};

interface EvalLine {
  kind: "eval";
  step: number;
  loss: number;
  accuracy?: number;
}

/** Dawn's notes on lavapipe's limits, printed by every run: harmless, and noise here. */
const DAWN_NOISE = /^Warning: maxDynamic\w+ artificially reduced.*\n/gm;

async function lrkc(...argv: string[]): Promise<void> {
  const child = spawn(process.execPath, [join(root, "bin/lrkc.js"), ...argv], {
    cwd: root,
    stdio: ["inherit", "inherit", "pipe"],
  });
  let pending = "";
  child.stderr.on("data", (chunk: Buffer) => {
    pending += chunk.toString();
    const end = pending.lastIndexOf("\n") + 1;
    process.stderr.write(pending.slice(0, end).replace(DAWN_NOISE, ""));
    pending = pending.slice(end);
  });
  const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
  process.stderr.write(pending);
  if (status !== 0) {
    process.stderr.write(`main job: \`lrkc ${argv.join(" ")}\` failed (exit ${status})\n`);
    process.exit(status ?? 1);
  }
}

/** Runs `lrkc … --json` and returns its `result`. */
async function lrkcJson(...argv: string[]): Promise<{ accuracy?: number; loss: number }> {
  const child = spawn(process.execPath, [join(root, "bin/lrkc.js"), ...argv], {
    cwd: root,
    stdio: ["ignore", "pipe", "ignore"],
  });
  let out = "";
  child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
  const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
  if (status !== 0) {
    process.stderr.write(`main job: \`lrkc ${argv.join(" ")}\` failed (exit ${status})\n${out}`);
    process.exit(status ?? 1);
  }
  return (JSON.parse(out) as { result: { accuracy?: number; loss: number } }).result;
}

function evals(runFolder: string): EvalLine[] {
  return new RunFolder(resolve(root, runFolder))
    .metrics()
    .filter((m) => m["kind"] === "eval") as unknown as EvalLine[];
}

/** Compiles a train block the way `lrkc train` does (its `init` file is not read). */
function compile(path: string): TrainProgram {
  const file = new SourceFile(path, readFileSync(join(root, path), "utf8"));
  const { compiled, diagnostics } = compileFile(file);
  if (!compiled) throw new Error(`${path} does not compile: ${diagnostics[0]?.message ?? "?"}`);
  return compiled.program;
}

/** Peak bytes of a train block's fused step plan (portable WebGPU target). */
function plannedBytes(program: TrainProgram): number {
  return planStep(program.step, portableTarget).peakBytes;
}

function trainableCount(program: TrainProgram): { trainable: number; total: number } {
  const trainable = new Set(program.step.trainable.map((path) => `param:${path}`));
  let t = 0;
  let all = 0;
  for (const i of program.step.inputs) {
    if (i.role !== "param") continue;
    const n = i.shape.reduce((a, b) => a * b, 1);
    all += n;
    if (trainable.has(i.name)) t += n;
  }
  return { trainable: t, total: all };
}

const pct = (x: number | undefined) => (x === undefined ? "?" : `${(100 * x).toFixed(1)}%`);
const minutes = (s: number) =>
  `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, "0")}s`;

const started = performance.now();
const say = (text: string) => process.stdout.write(`\n== ${text}\n`);

if (
  args.includes("--skip-pretrain") &&
  existsSync(resolve(root, runs.pretrain, "final.safetensors"))
) {
  say(`1/2 pretraining: reusing ${runs.pretrain}/final.safetensors (--skip-pretrain)`);
} else {
  say(`1/2 pretrain the tiny LM on 2-digit addition (${PRETRAIN}), every weight trained`);
  // --force: the main job starts its runs over each time (lrkc train refuses to replace a run)
  await lrkc(
    "train",
    PRETRAIN,
    "--force",
    "--out",
    runs.pretrain,
    "--device",
    device,
    ...overrides,
  );
}
say(`2/2 LoRA fine-tune on 2-digit subtraction (${FINETUNE}), the base frozen`);
await lrkc(
  "train",
  FINETUNE,
  ...["--init", join(runs.pretrain, "final.safetensors")],
  ...["--force", "--out", runs.finetune, "--device", device, ...overrides],
);

// What the adapters did to the pretraining task (the frozen base itself is unchanged).
const forgot = await lrkcJson(
  "eval",
  FINETUNE,
  ...["--weights", join(runs.finetune, "final.safetensors"), "--data", "add", "--json"],
  ...[
    "--device",
    device,
    ...overrides.filter((o, i) => o !== "--steps" && overrides[i - 1] !== "--steps"),
  ],
);

const pre = evals(runs.pretrain);
const ft = evals(runs.finetune);
const lora = compile(FINETUNE);
const full = compile(FULL);
const loraBytes = plannedBytes(lora);
const fullBytes = plannedBytes(full);
const counts = trainableCount(lora);

const rows: [string, string][] = [
  ["addition, after pretraining", pct(pre[pre.length - 1]?.accuracy)],
  ["subtraction, before the fine-tune", pct(ft[0]?.accuracy)],
  ["subtraction, after the LoRA fine-tune", pct(ft[ft.length - 1]?.accuracy)],
  ["addition, with the subtraction adapters", pct(forgot.accuracy)],
];
say("summary");
process.stdout.write(
  [
    "held-out exact-match accuracy (answers generated greedily, whole answer must match):",
    ...rows.map(([k, v]) => `  ${k.padEnd(40)} ${v.padStart(6)}`),
    "  (the adapters specialize the model to subtraction; the frozen base, without them, is the",
    "   pretrained model unchanged: train on a mix of both tasks to keep addition)",
    "",
    `GPU memory of one training step (lrk's fused plan, batch ${lora.batch}):`,
    `  LoRA fine-tune (${counts.trainable.toLocaleString("en-US")} of ${counts.total.toLocaleString("en-US")} weights trained)`.padEnd(
      58,
    ) + formatBytes(loraBytes).padStart(10),
    `  full fine-tune (${FULL})`.padEnd(58) + formatBytes(fullBytes).padStart(10),
    `  LoRA needs ${((100 * loraBytes) / fullBytes).toFixed(0)}% of full fine-tuning's memory`,
    "",
    `total time ${minutes((performance.now() - started) / 1000)}; run folders: ${runs.pretrain}, ${runs.finetune}`,
    "",
  ].join("\n"),
);
process.exit(0);
