// One training step of the tiny LM with LoRA: lrk on WebGPU beside the same model and step
// written in tfjs (bench/tiny-lm-tfjs.ts) on tfjs-webgpu, on the same Dawn adapter.
//
//   npm run bench:train [-- --runs N] [--warmup N] [--no-autotune] [--tfjs-submit-batch N]
//                          [--no-torch]
//
// --tfjs-submit-batch sets tfjs's WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE (default 15: tfjs submits
// every 15 dispatches; one submit per step measured no faster on lavapipe).
//
// The program is examples/lora_finetune.lrk as it is (TinyLM d 128, 2 layers, 4 heads, LoRA rank 8
// alpha 16 on attn q/k/v/o and mlp up/down, AdamW lr 5e-3 wd 0, clip 1.0, cosine schedule, batch
// 64 of 2-digit subtraction, T 9) without its `init` checkpoint (the base is lrk's random init;
// the step does the same work either way) and without `eval` and `checkpoint`. tfjs gets lrk's
// initialized weights, so both compute the same losses: the first steps' losses and the adapters
// after them are compared before anything is timed, and a mismatch stops the benchmark.
//
// lrk is timed as its training loop runs: each step is one `train()` call from runtime/trainer.ts
// resumed at that step, timed by the trainer's own per-step `millis` (feeds built and the batch
// uploaded, one submit, the waiter's sleep, the outputs the trainer reads back each step, the
// store updated; not the read-back of the adapters for the checkpoint that ends a run). tfjs is
// timed as a tfjs loop would run: the step under tf.tidy, a flush, the same sleeping GpuWaiter (a
// pending Dawn promise busy-polls a core), then the loss read with `data()`. Warm-up steps (shader
// compilation, the autotuner, the waiters learning) are excluded; figures are medians over runs
// that alternate lrk and tfjs, so drift in the machine's speed hits both alike.
//
// PyTorch column (when a python3 with torch is present, and not --no-torch): the same step written
// in torch (bench/tiny_lm_torch.py) on the CPU, from the same initialized weights on the same
// batches, with OMP_WAIT_POLICY=PASSIVE and as many threads as cores, in a subprocess that times
// one step per request: its steps alternate with lrk's and tfjs's (each runs alone, and drift in
// the machine's speed hits all three alike); its first steps' losses must equal lrk's, as
// tfjs's must.
//
// Dispatches per step count compute dispatches: lrk's from its kernel plan, tfjs's by wrapping
// its backend's recordAndSubmit. "Bytes bound" sums, over a step's dispatches, the size of every
// tensor a dispatch reads or writes, each once per dispatch (not the memory traffic a kernel
// really makes, which also counts re-reads of tiles): for lrk from the plan (a pooled buffer
// counts the size of the tensor it holds at that dispatch), for tfjs from the tensors bound.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { numel, type Graph } from "../compiler/ir.js";
import { stepEntry, type Plan, type Tensor } from "../compiler/program.js";
import { loadPlans } from "../cli/target.js";
import { compileRun } from "../cli/train.js";
import { SourceFile } from "../language/source.js";
import { GpuWaiter, summarize } from "../runtime/gpu.js";
import { lrFactor } from "../runtime/schedule.js";
import { initialize, train } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { countDispatches, flush, tfjsWebGpu } from "./tfjs-webgpu.js";
import { tinyLmLoraTfjs } from "./tiny-lm-tfjs.js";
import { startTorch } from "./torch.js";
import { quartiles } from "./stats.js";

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const numberArg = (name: string) =>
  args.includes(name) ? Number(args[args.indexOf(name) + 1]) : undefined;

const root = fileURLToPath(new URL("../..", import.meta.url)); // dist/bench/ → the repository
/** Steps whose losses and adapters are compared before timing. */
const CHECK_STEPS = 3;
/**
 * A pause after each PyTorch step before lrk's next: OpenBLAS's idle threads spin for a while
 * after a call (OMP_WAIT_POLICY does not reach its own pthread pool), and lrk's step, next in
 * the round, lost a core to them (its median 56 ms with the torch column, 47 without).
 */
const SETTLE_MS = 200;
const settle = () => new Promise((done) => setTimeout(done, SETTLE_MS));
const LOSS_TOLERANCE = 1e-4;
const PARAM_TOLERANCE = 1e-3;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
};

/** examples/lora_finetune.lrk without `init`, `eval` and `checkpoint` (same folder: imports resolve). */
function benchProgram(): SourceFile {
  const path = join(root, "examples", "lora_finetune.lrk");
  const text = readFileSync(path, "utf8");
  const kept = text
    .split("\n")
    .filter((line) => !/^\s*(init|eval|checkpoint)\b/.test(line))
    .join("\n");
  if (kept === text || /^\s*init\b/m.test(kept))
    throw new Error("examples/lora_finetune.lrk changed: its `init` line was not found");
  return new SourceFile(join(root, "examples", "lora_finetune_bench.lrk"), kept);
}

/**
 * A number argument from the program text, e.g. `rank` in `lora(rank: 8, …)`; every call of
 * `call` must give the same value (the tfjs model has one LoRA scale and one optimizer).
 */
function argument(text: string, call: string, name: string): number | undefined {
  const values = new Set<number | undefined>();
  for (const m of text.matchAll(new RegExp(`\\b${call}\\(([^)]*)\\)`, "g"))) {
    const a = new RegExp(`\\b${name}:\\s*([-0-9.e]+)`).exec(m[1]!);
    values.add(a ? Number(a[1]) : undefined);
  }
  if (values.size > 1)
    throw new Error(`bench/train.ts: the \`${call}\` calls differ in \`${name}\``);
  return [...values][0];
}

/** lrk's dispatches and the bytes of the tensors they bind, from the plan it runs. */
function planTraffic(
  graph: Graph,
  plan: Plan,
  entry: string,
  reads: ReadonlySet<string> | undefined,
) {
  const pe = plan.entries[entry]!;
  let dispatches = 0;
  let bytes = 0;
  for (const id of pe.dispatches) {
    const k = plan.kernels[id]!;
    const [x, y, z] = k.dispatch;
    if (x * y * z === 0) continue;
    dispatches++;
    // Nodes this kernel computes, and what they read: a pooled buffer holds one of them now.
    const near = new Set<number>(k.nodes);
    for (const n of k.nodes) for (const i of graph.node(n).inputs) near.add(i);
    const seen = new Set<number>();
    for (const binding of k.bindings) {
      if (seen.has(binding.buffer)) continue;
      seen.add(binding.buffer);
      const buffer = plan.buffers[binding.buffer]!;
      let size = buffer.bytes;
      if (buffer.role === "activation" || buffer.role === "scratch") {
        const held = buffer.names
          .map((name) => /^%(\d+)$/.exec(name))
          .filter((m): m is RegExpExecArray => m !== null && near.has(Number(m[1])))
          .map((m) => 4 * numel(graph.shape(Number(m[1]))));
        if (held.length) size = Math.max(...held);
      }
      bytes += size;
    }
  }
  const readback = new Set(
    pe.outputs.filter((o) => !reads || reads.has(o.name)).map((o) => o.buffer),
  );
  const down = [...readback].reduce((s, b) => s + plan.buffers[b]!.bytes, 0);
  const up = plan.inputs
    .filter((i) => i.role === "data" || i.role === "scalar")
    .reduce((s, i) => s + 4 * numel(i.shape), 0);
  return { dispatches, bytes, up, down };
}

/**
 * Makes every tensor of the store readable on the host, where the device keeps outputs on the GPU
 * until asked (`sync`, optional: a device without it returns host tensors).
 */
async function syncStore(device: WebGpuDevice, tensors: Iterable<Tensor>): Promise<void> {
  const sync = (device as { sync?: (tensors: Iterable<Tensor>) => Promise<void> }).sync;
  await sync?.call(device, tensors);
}

async function main(): Promise<void> {
  const file = benchProgram();
  const { run, diagnostics } = compileRun(file);
  if (!run) throw new Error(diagnostics.map((d) => `${d.code}: ${d.message}`).join("\n"));
  const { program } = run;
  const device = await WebGpuDevice.open();
  await loadPlans(device, program, { autotune: !flag("--no-autotune") });
  const adapter = summarize(device.adapter);
  const { tf, backend } = await tfjsWebGpu();
  const counter = countDispatches(backend);
  const submitBatch = numberArg("--tfjs-submit-batch");
  if (submitBatch) tf.env().set("WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE", submitBatch);

  const text = file.text;
  const rank = argument(text, "lora", "rank")!;
  const alpha = argument(text, "lora", "alpha") ?? rank;
  const heads = argument(text, "TinyLM", "heads") ?? 4;
  const opt = {
    lr: argument(text, "adamw", "lr")!,
    weightDecay: argument(text, "adamw", "weight_decay") ?? 0.01,
  };
  if (/\blora\([^)]*\b(dropout|rslora):/.test(text) || /\bd:\s|layers:|ctx:/.test(text))
    throw new Error("bench/train.ts mirrors lora(rank, alpha) on TinyLM's defaults only");
  const { B, T } = (() => {
    const s = program.data.fields["input"]!.shape;
    return { B: s[0]!, T: s[1]! };
  })();
  const shapeOf = (path: string) => program.params.find((p) => p.path === path)!;
  const d = shapeOf("tok.weight").shape[1]!;
  const layers = program.params.filter((p) => /^blocks\.\d+\.ln1\.weight$/.test(p.path)).length;
  const trainable = program.params.filter((p) => p.trainable);
  const trainableCount = trainable.reduce((s, p) => s + numel(p.shape), 0);
  const config =
    `examples/lora_finetune.lrk without init/eval/checkpoint: TinyLM(vocab ${run.data.vocab}, d ${d}, ` +
    `${layers} layers, ${heads} heads), batch ${B} × T ${T}, LoRA rank ${rank} alpha ${alpha} dropout 0 on ` +
    `attn.{q,k,v,o} and mlp.{up,down} (${trainableCount.toLocaleString("en-US")} trainable), ` +
    `AdamW lr ${opt.lr} wd ${opt.weightDecay}, clip ${program.clip ?? "none"}, cosine schedule`;
  console.log(`adapter: ${adapter.description} (${adapter.vendor}, ${adapter.architecture})`);
  console.log(`config: ${config}`);

  // Both start from lrk's initialized weights.
  const started = performance.now();
  let store: Map<string, Tensor> = await initialize(program, device);
  await syncStore(device, store.values());
  const initialParams = new Map(
    [...store]
      .filter(([name]) => name.startsWith("param:"))
      .map(([name, t]) => [name, { shape: [...t.shape], data: Float32Array.from(t.data) }]),
  );
  const model = tinyLmLoraTfjs(tf, store, {
    heads,
    scale: alpha / rank,
    lr: opt.lr,
    weightDecay: opt.weightDecay,
    clip: program.clip,
  });
  const steps = program.steps;
  let step = 0;

  // The device as the trainer sees it, noting which outputs the step asks to read back.
  let stepReads: ReadonlySet<string> | undefined;
  const traced = {
    name: device.name,
    run(...args: Parameters<WebGpuDevice["run"]>): Promise<Map<string, Tensor>> {
      stepReads = args[3]?.read;
      return device.run(...args);
    },
    sync: (tensors: Iterable<Tensor>) => syncStore(device, tensors),
  };
  const lrkStep = async (s: number): Promise<{ ms: number; loss: number }> => {
    // One step, s, of the run's `steps` (not `steps: s`: that is also the schedule's length).
    // Timed by the trainer itself (`millis`: the step as a long run takes it), which leaves out
    // what ending a run adds: reading the adapters and moments back for its checkpoint.
    let ms = NaN;
    const result = await train(run, traced, {
      resume: { step: s - 1, store },
      shouldStop: () => true,
      onStep: (e) => (ms = e.millis),
    });
    store = result.store;
    return { ms, loss: result.losses[0]! };
  };
  const tfWaiter = new GpuWaiter();
  const tfStep = async (s: number): Promise<{ ms: number; loss: number; recordMs: number }> => {
    const t0 = performance.now();
    const batch = run.data.batch("train", s - 1, program.batch).fields;
    const loss = model.step(
      batch["input"]!.data as Int32Array,
      batch["target"]!.data as Int32Array,
      [B, T],
      s,
      lrFactor(program.schedule, s, steps),
    );
    const recordMs = performance.now() - t0;
    flush(backend);
    await tfWaiter.wait(backend.device);
    const value = (await loss.data())[0]!;
    const ms = performance.now() - t0;
    loss.dispose();
    return { ms, loss: value, recordMs };
  };

  // Correctness first: the same losses step by step, and the same adapters and moments after.
  const losses: [number, number][] = [];
  for (let i = 0; i < CHECK_STEPS; i++) {
    step++;
    const ours = await lrkStep(step);
    counter.reset();
    const theirs = await tfStep(step);
    losses.push([ours.loss, theirs.loss]);
  }
  const tfDispatches = counter.dispatches;
  const tfBytes = counter.bytes;
  const tfSubmits = counter.submits;
  const tfTensors = tf.memory().numTensors;
  await syncStore(device, store.values());
  let worst = 0;
  for (const [name, values] of await model.read()) {
    const want = store.get(name)!.data;
    let scale = 0;
    let diff = 0;
    for (let i = 0; i < values.length; i++) {
      scale = Math.max(scale, Math.abs(want[i]!));
      diff = Math.max(diff, Math.abs(values[i]! - want[i]!));
    }
    worst = Math.max(worst, diff / Math.max(scale, 1e-30));
  }
  const lossDiff = Math.max(...losses.map(([a, b]) => Math.abs(a - b) / Math.abs(b)));
  console.log(
    `losses, steps 1..${CHECK_STEPS} (lrk / tfjs): ${losses.map(([a, b]) => `${a.toFixed(6)} / ${b.toFixed(6)}`).join(", ")}`,
  );
  console.log(
    `after step ${CHECK_STEPS}: adapters and moments differ by ${worst.toExponential(2)} relative (largest), losses by ${lossDiff.toExponential(2)}`,
  );
  if (!(lossDiff <= LOSS_TOLERANCE) || !(worst <= PARAM_TOLERANCE))
    throw new Error("lrk and tfjs do not compute the same step: the comparison would be wrong");
  console.log(
    `first steps (compilation, autotuning): ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );

  // Warm-up, excluded: alternating steps until both waiters have learned how long to sleep.
  const probe = Math.max((await lrkStep(++step)).ms, (await tfStep(step)).ms);
  const warmups = numberArg("--warmup") ?? Math.max(5, Math.min(15, Math.round(2000 / probe)));
  const runs = numberArg("--runs") ?? Math.max(25, Math.min(60, Math.round(15000 / probe)));
  const torch = flag("--no-torch")
    ? undefined
    : await startTorch({
        script: join(root, "bench", "tiny_lm_torch.py"),
        params: initialParams,
        batch: (i) => {
          const f = run.data.batch("train", i, program.batch).fields;
          return { input: f["input"]!.data as Int32Array, target: f["target"]!.data as Int32Array };
        },
        batchShape: [B, T],
        lrScale: (i) => lrFactor(program.schedule, i + 1, steps),
        config: {
          heads,
          scale: alpha / rank,
          lr: opt.lr,
          weightDecay: opt.weightDecay,
          clip: program.clip,
        },
        check: CHECK_STEPS,
        steps: step + warmups + runs,
      });
  if (torch) {
    const diff = Math.max(...torch.losses.map((l, i) => Math.abs(l - losses[i]![0]) / Math.abs(l)));
    console.log(
      `PyTorch ${torch.torch} (${torch.python}, ${torch.threads} threads, ${torch.blas}), losses steps 1..${CHECK_STEPS}: ${torch.losses.map((l) => l.toFixed(6)).join(", ")} (differ from lrk's by ${diff.toExponential(2)} relative)`,
    );
    if (torch.blas === "reference BLAS")
      console.log(
        "  warning: this torch runs on the reference BLAS (libblas3), ~15× slower than an optimized one; " +
          "install one (Debian: apt-get install libopenblas0-pthread) for a fair PyTorch column",
      );
    if (!(diff <= LOSS_TOLERANCE)) {
      torch.close();
      throw new Error(
        "lrk and PyTorch do not compute the same step: the comparison would be wrong",
      );
    }
  } else if (!flag("--no-torch"))
    console.log("PyTorch: no python3 with torch found; its column is left out");
  for (let i = 0; i < warmups; i++) {
    step++;
    await lrkStep(step);
    await tfStep(step);
    if (torch) {
      await torch.step(step - 1);
      await settle();
    }
  }
  if (tf.memory().numTensors !== tfTensors)
    throw new Error(
      `tfjs leaks tensors: ${tfTensors} after the first steps, ${tf.memory().numTensors} now`,
    );

  const lrkMs: number[] = [];
  const tfMs: number[] = [];
  const tfRecordMs: number[] = [];
  const torchMs: number[] = [];
  let last: [number, number] = [NaN, NaN];
  for (let r = 0; r < runs; r++) {
    step++;
    const ours = await lrkStep(step);
    const theirs = await tfStep(step);
    lrkMs.push(ours.ms);
    tfMs.push(theirs.ms);
    if (torch) {
      torchMs.push(await torch.step(step - 1));
      await settle();
    }
    tfRecordMs.push(theirs.recordMs);
    last = [ours.loss, theirs.loss];
  }
  console.log(
    `${warmups} warm-up and ${runs} timed steps each; loss at step ${step}: lrk ${last[0].toFixed(5)}, tfjs ${last[1].toFixed(5)}`,
  );

  const plan = device.plan(program.step);
  const ours = planTraffic(program.step.graph, plan, stepEntry(program.step, step).name, stepReads);
  const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;
  const kb = (n: number) => `${(n / 1e3).toFixed(1)} kB`;
  torch?.close();
  const range = (xs: number[]) => {
    const { q1, q3 } = quartiles(xs);
    return `${q1.toFixed(1)}–${q3.toFixed(1)}`;
  };
  const ratioSummary = (xs: number[]) => {
    const { q1, q3 } = quartiles(xs);
    return `${median(xs).toFixed(2)}× [${q1.toFixed(2)}, ${q3.toFixed(2)}]`;
  };
  const lrk = median(lrkMs);
  const tfj = median(tfMs);
  const pt = torch ? median(torchMs) : undefined;
  const rows: string[][] = [
    ["ms/step, median", lrk.toFixed(1), tfj.toFixed(1), pt?.toFixed(1) ?? ""],
    [
      "ms/step, fastest",
      Math.min(...lrkMs).toFixed(1),
      Math.min(...tfMs).toFixed(1),
      torch ? Math.min(...torchMs).toFixed(1) : "",
    ],
    ["ms/step, interquartile range", range(lrkMs), range(tfMs), torch ? range(torchMs) : ""],
    ["tfjs: JS recording the step, median", "", median(tfRecordMs).toFixed(1)],
    ["lrk speed-up (median)", `${(tfj / lrk).toFixed(2)}×`, ""],
    // each step's ratio to the lrk step beside it: drift in the machine's speed cancels
    [
      "lrk speed-up, per-step ratios: median [IQR]",
      ratioSummary(tfMs.map((t, i) => t / lrkMs[i]!)),
      "",
    ],
    ...(torch ? [["lrk time / PyTorch time (median)", `${(lrk / pt!).toFixed(2)}×`]] : []),
    ["dispatches/step", String(ours.dispatches), String(tfDispatches)],
    ["queue submits/step", "1", String(tfSubmits)],
    ["bytes bound by dispatches/step", mb(ours.bytes), mb(tfBytes)],
    ["host → GPU/step (batch, scalars)", kb(ours.up), "≥ " + kb(2 * B * T * 4)],
    [
      "GPU → host/step",
      stepReads?.size === 1 && stepReads.has("loss")
        ? `${ours.down} B (loss)`
        : `${kb(ours.down)} (${stepReads ? [...stepReads].join(", ") : "all outputs"})`,
      "4 B (loss)",
    ],
    [
      "loss at step 1",
      losses[0]![0].toFixed(6),
      losses[0]![1].toFixed(6),
      torch?.losses[0]!.toFixed(6) ?? "",
    ],
  ];
  const header = ["per training step", "lrk", "tfjs-webgpu", ...(torch ? ["PyTorch CPU"] : [])];
  for (const row of rows) row.length = header.length;
  for (const row of rows) for (let i = 0; i < row.length; i++) row[i] ??= "";
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  console.log();
  console.log(`training step, ${adapter.description}; ${config}; ${runs} runs, alternating`);
  console.log(line(header));
  console.log(
    `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`,
  );
  for (const row of rows) console.log(line(row));
  model.dispose();
}

main().then(
  // Dawn keeps the process alive: exit explicitly.
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
