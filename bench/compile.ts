// Compile time of `lrkc build` against model depth: the LoRA fine-tune of the tiny LM
// (examples/lora_finetune.lrk, TinyLM at d 128, LoRA rank 8 on every linear) with `layers: N`,
// built as a user builds it (`lrkc build FILE --emit plan --device portable`, a fresh process:
// Node's start-up included), timed as CPU seconds of that process (user + system: steadier on a
// shared machine) and wall seconds.
//
//   npm run bench:compile [-- LAYERS...] [--repeat N] [--against DIR]
//
// Default: 2 4 12 layers, medians of 3. --against DIR: another built checkout of lrk (its
// bin/lrkc.js), run alternately with this one, each depth's medians side by side with their
// ratio (this / other), so that a loaded machine slows both alike.
//
// Run it from the repository root. Where the time goes inside the compiler:
// bench/fuse-depth.ts (front end, fusion and planStep separately) or `node --cpu-prof`.
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const args = process.argv.slice(2);
const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const depths = args
  .filter((a, i) => /^\d+$/.test(a) && !["--repeat", "--against"].includes(args[i - 1] ?? ""))
  .map(Number);
const repeat = Number(option("--repeat") ?? 3);
const lrkc = resolve("bin/lrkc.js");
const against = option("--against");
const other = against === undefined ? undefined : resolve(against, "bin/lrkc.js");

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

/** examples/lora_finetune.lrk at `layers` layers, in `dir` beside the tiny LM it imports. */
function writeProgram(dir: string, layers: number): string {
  const text = readFileSync("examples/lora_finetune.lrk", "utf8");
  const deep = text.replace(
    "model TinyLM(vocab: sub.vocab)",
    `model TinyLM(vocab: sub.vocab, layers: ${layers})`,
  );
  if (deep === text) throw new Error("examples/lora_finetune.lrk changed its model line");
  const file = join(dir, `lora_finetune_${layers}.lrk`);
  writeFileSync(file, deep);
  return file;
}

/** CPU (user + system) and wall seconds of one `lrkc build`, from bash's `time`. */
function build(file: string, out: string, cli = lrkc): { cpu: number; wall: number } {
  const command = `TIMEFORMAT='%U %S %R'; time node "${cli}" build "${file}" --emit plan --device portable --out "${out}" > /dev/null`;
  const r = spawnSync("bash", ["-c", command], { encoding: "utf8" });
  const last = r.stderr.trim().split("\n").at(-1) ?? "";
  const times = last.split(" ").map(Number);
  if (r.status !== 0 || times.length !== 3 || times.some(Number.isNaN))
    throw new Error(`lrkc build ${file} failed (exit ${r.status}):\n${r.stderr}`);
  return { cpu: times[0]! + times[1]!, wall: times[2]! };
}

const dir = mkdtempSync(join(tmpdir(), "lrk-bench-compile-"));
try {
  copyFileSync("examples/tiny_lm.lrk", join(dir, "tiny_lm.lrk"));
  const rows: string[] = [];
  const seconds = (x: number) => `${x.toFixed(2).padStart(8)} s`;
  for (const layers of depths.length ? depths : [2, 4, 12]) {
    const file = writeProgram(dir, layers);
    const out = join(dir, `out${layers}`);
    const runs: { cpu: number; wall: number }[] = [];
    const others: { cpu: number; wall: number }[] = [];
    for (let i = 0; i < repeat; i++) {
      runs.push(build(file, out));
      if (other) others.push(build(file, out, other));
    }
    const cpu = median(runs.map((r) => r.cpu));
    const wall = median(runs.map((r) => r.wall));
    let row = `${String(layers).padStart(6)} ${seconds(cpu)} ${seconds(wall)}`;
    if (other) {
      const cpuOther = median(others.map((r) => r.cpu));
      const wallOther = median(others.map((r) => r.wall));
      row += ` ${seconds(cpuOther)} ${seconds(wallOther)} ${(cpu / cpuOther).toFixed(2).padStart(8)}× ${(wall / wallOther).toFixed(2).padStart(8)}×`;
    }
    rows.push(row);
  }
  process.stdout.write(
    [
      `lrkc build --emit plan --device portable of examples/lora_finetune.lrk at several depths (medians of ${repeat}${other ? `, alternating with ${against}` : ""})`,
      other
        ? "layers      CPU       wall   CPU other  wall other  CPU ratio wall ratio"
        : "layers      CPU       wall",
      ...rows,
    ].join("\n") + "\n",
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
