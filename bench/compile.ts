// Compile time of `lrkc build` against model depth: the LoRA fine-tune of the tiny LM
// (examples/lora_finetune.lrk, TinyLM at d 128, LoRA rank 8 on every linear) with `layers: N`,
// built as a user builds it (`lrkc build FILE --emit plan --device portable`, a fresh process:
// Node's start-up included; the plan printed to /dev/null), timed as CPU seconds of that process
// (user + system: steadier on a shared machine) and wall seconds.
//
//   npm run bench:compile [-- LAYERS...] [--repeat N] [--against DIR]
//
// Default: 2 4 12 layers, medians of 3. --against DIR: another built checkout of lrk (its
// bin/lrkc.js), run alternately with this one, each depth's medians side by side with their
// ratio (this / other), so that a loaded machine slows both alike; and each depth's plan.json and
// kernel files from the two (one more build of each, with --out, untimed) are compared (each built from its own root, where kernel headers name
// the std module files alike): a difference is printed and the exit status is 1.
//
// It also times a fixed plain-JavaScript loop in a fresh process beside the builds, so that runs
// taken while the machine itself was slower can be told apart.
//
// Run it from the repository root. Where the time goes inside the compiler:
// bench/fuse-depth.ts (front end, fusion and planStep separately) or `node --cpu-prof`.
import { spawnSync } from "node:child_process";
import {
  copyFileSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";

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

/**
 * CPU (user + system) and wall seconds of a shell command, from bash's `time`, run in `cwd`;
 * throws, with what the command printed on stderr, if it fails.
 */
function timed(command: string, what: string, cwd?: string): { cpu: number; wall: number } {
  const script = `TIMEFORMAT='%U %S %R'; time ${command}`;
  const r = spawnSync("bash", ["-c", script], { encoding: "utf8", ...(cwd ? { cwd } : {}) });
  const times = (r.stderr.trim().split("\n").at(-1) ?? "").split(" ").map(Number);
  if (r.status !== 0 || times.length !== 3 || times.some(Number.isNaN))
    throw new Error(`${what} failed (exit ${r.status}):\n${r.stderr}`);
  return { cpu: times[0]! + times[1]!, wall: times[2]! };
}

/**
 * One `lrkc build`, timed: the plan printed (to /dev/null), or with `out` written there as
 * plan.json and kernel files (untimed here: for comparing plans; writing 1,500 files is the file
 * system's time, not the compiler's).
 */
function build(file: string, cli = lrkc, out?: string): { cpu: number; wall: number } {
  const to = out === undefined ? "" : ` --out "${out}"`;
  const command = `node "${cli}" build "${file}" --emit plan --device portable${to} > /dev/null`;
  // run from the checkout's root, as for this one: kernel headers name std files relative to it
  return timed(command, `lrkc build ${file}`, dirname(dirname(cli)));
}

/**
 * The first difference between two `--out` folders (file names, then contents), or undefined
 * when they hold the same plan and kernels.
 */
function firstDifference(mine: string, theirs: string): string | undefined {
  const names = readdirSync(mine).sort();
  const otherNames = readdirSync(theirs).sort();
  if (names.join("\n") !== otherNames.join("\n"))
    return `the file lists differ (${names.length} files here, ${otherNames.length} there)`;
  for (const name of names)
    if (!readFileSync(join(mine, name)).equals(readFileSync(join(theirs, name))))
      return `${name} differs`;
  return undefined;
}

/**
 * Seconds of a fixed plain-JavaScript loop in a fresh process, run beside the builds: this VM's
 * own speed drifts (the same loop took 2.0 to 3.2 s minutes apart), and the builds drift with it.
 */
function referenceLoop(): number {
  const loop = "let x = 0; for (let i = 0; i < 5e7; i++) x += i; if (x < 0) console.log(x);";
  return timed(`node -e "${loop}"`, "the reference loop").wall;
}
const reference: number[] = [];

const dir = mkdtempSync(join(tmpdir(), "lrk-bench-compile-"));
try {
  copyFileSync("examples/tiny_lm.lrk", join(dir, "tiny_lm.lrk"));
  const rows: string[] = [];
  const seconds = (x: number) => `${x.toFixed(2).padStart(8)} s`;
  for (const layers of depths.length ? depths : [2, 4, 12]) {
    const file = writeProgram(dir, layers);
    const out = join(dir, `out${layers}`);
    const otherOut = join(dir, `other${layers}`);
    const runs: { cpu: number; wall: number }[] = [];
    const others: { cpu: number; wall: number }[] = [];
    for (let i = 0; i < repeat; i++) {
      runs.push(build(file));
      if (other) others.push(build(file, other));
      reference.push(referenceLoop());
    }
    const cpu = median(runs.map((r) => r.cpu));
    const wall = median(runs.map((r) => r.wall));
    let row = `${String(layers).padStart(6)} ${seconds(cpu)} ${seconds(wall)}`;
    if (other) {
      const cpuOther = median(others.map((r) => r.cpu));
      const wallOther = median(others.map((r) => r.wall));
      row += ` ${seconds(cpuOther)} ${seconds(wallOther)} ${(cpu / cpuOther).toFixed(2).padStart(8)}× ${(wall / wallOther).toFixed(2).padStart(8)}×`;
      build(file, lrkc, out);
      build(file, other, otherOut);
      const difference = firstDifference(out, otherOut);
      row += difference ? `  DIFFERENT PLAN: ${difference}` : "  same plan";
      if (difference) process.exitCode = 1;
    }
    rows.push(row);
  }
  process.stdout.write(
    [
      `lrkc build --emit plan --device portable of examples/lora_finetune.lrk at several depths (medians of ${repeat}${other ? `, alternating with ${against}` : ""})`,
      other
        ? "layers      CPU       wall   CPU other  wall other  CPU ratio wall ratio  plan.json and kernels"
        : "layers      CPU       wall",
      ...rows,
      `(this machine's speed meanwhile: a plain loop of 5·10⁷ additions in a fresh node took ${median(reference).toFixed(2)} s, median of ${reference.length}; ${Math.min(...reference).toFixed(2)}–${Math.max(...reference).toFixed(2)} s)`,
    ].join("\n") + "\n",
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
