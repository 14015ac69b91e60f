// `lrkc generate FILE --prompt TEXT`: text from a train block's model, token by token. With a KV
// cache (compiler/generation.ts: the model's attention keeps its keys and values with `kv_cache`,
// as std.models' GPT-2 and Llama do) the prompt runs once (prefill) and then each new token alone
// (decode), reading the cached keys and values, which stay on the device; a model without one
// (or `--no-kv-cache`) runs its `predict` entry (`model(batch.input)`, dropout off) on all the
// tokens so far for each new one (O(T²) work). The sampler (compiler/sampler.ts) picks the next
// token from the last position's logits on the same device, so only the token id comes back: the
// argmax at `--temperature 0` (greedy, deterministic), else a draw from softmax(logits / T) cut to
// the smallest set of tokens whose probability reaches `--top-p`, seeded by `--seed` (the same
// draws on every device, with or without the cache). The batch input's length T (fixed by the
// block's data) is the cache's capacity and bounds prompt + generated tokens.
import { statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { compile } from "../compiler/compile.js";
import { planStep } from "../compiler/compile.js";
import type {
  Entry,
  GenerationProgram,
  GraphProgram,
  Tensor,
  TrainProgram,
} from "../compiler/program.js";
import { samplerProgram } from "../compiler/sampler.js";
import { error, type Diagnostic } from "../language/diagnostics.js";
import type { Device } from "../runtime/device.js";
import { renderChat, TemplateError } from "../runtime/chat-template.js";
import {
  hasTokenizer,
  readTokenizer,
  TokenizerError,
  type Tokenizer,
} from "../runtime/tokenizer.js";
import { initializeWithWeights, type Run } from "../runtime/trainer.js";
import { compiling } from "./jit.js";
import { startingPoint } from "./export.js";
import { failureDiagnostic } from "./failures.js";
import { readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";
import { deviceTarget, loadPlans } from "./target.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { devices, openDeviceOrDiagnostic, runOrDiagnostic } from "./train.js";

export interface GenerateCommandOptions extends ReportOptions {
  train?: string;
  device: string;
  /** safetensors with parameters by path; without it, the block's `init` (or its initializers). */
  weights?: string;
  prompt?: string;
  /** Wrap --prompt as a user message in the tokenizer's chat template. */
  chat?: boolean;
  /** Raw prompt token ids, comma- or space-separated, in place of --prompt. */
  ids?: string;
  /** A Hugging Face tokenizer folder; default: the data's tokenizer, else the `init` folder's. */
  tokenizer?: string;
  maxTokens: string;
  temperature: string;
  topP: string;
  seed: string;
  /** commander's negated `--no-autotune` */
  autotune?: boolean;
  /** commander's negated `--no-kv-cache`: recompute the prefix for every token */
  kvCache?: boolean;
}

export interface Sampling {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
}

/** The numeric flags, or the message of the first bad one. */
function samplingOf(options: GenerateCommandOptions): Sampling | string {
  const maxTokens = Number(options.maxTokens);
  const temperature = Number(options.temperature);
  const topP = Number(options.topP);
  const seed = Number(options.seed);
  if (!Number.isInteger(maxTokens) || maxTokens < 1)
    return "--max-tokens must be a positive integer";
  if (!Number.isFinite(temperature) || temperature < 0)
    return "--temperature must be a number ≥ 0 (0 is greedy)";
  if (!Number.isFinite(topP) || topP <= 0 || topP > 1) return "--top-p must be a number in (0, 1]";
  if (!Number.isInteger(seed) || seed < 0) return "--seed must be a whole number ≥ 0";
  return { maxTokens, temperature, topP, seed };
}

/** The tokenizer to use: --tokenizer, the data's, or the `init` folder's (if it has one). */
function findTokenizer(
  run: Run,
  program: TrainProgram,
  flag: string | undefined,
): Tokenizer | undefined {
  if (flag !== undefined) return readTokenizer(resolve(flag));
  const data = run.data as { tokenizer?: Tokenizer };
  if (data.tokenizer) return data.tokenizer;
  const init = program.init?.path;
  if (init === undefined) return undefined;
  const folder = isFolder(init) ? init : dirname(init);
  return hasTokenizer(folder) ? readTokenizer(folder) : undefined;
}

const isFolder = (p: string) => {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/** Loads the sampler for logits of this shape [B, T, V] on `device` (kernels on WebGPU). */
export async function loadSampler(
  device: Device,
  logits: readonly number[],
  sampling: Sampling,
): Promise<GraphProgram> {
  const sampler = samplerProgram({ ...sampling, logits });
  await loadProgram(device, sampler);
  return sampler;
}

/** Plans `program` for a WebGPU device and loads it (the interpreter needs nothing). */
async function loadProgram(device: Device, program: GraphProgram): Promise<void> {
  if (!(device instanceof WebGpuDevice)) return;
  const target = await deviceTarget(device, [program], { autotune: false });
  device.load(
    program,
    compiling(() => planStep(program, target)),
  );
}

/** The shape of an entry's `logits` output. */
function logitsShape(program: GraphProgram, entry: Entry): number[] {
  return [...program.graph.shape(entry.outputs.find((o) => o.name === "logits")!.node)];
}

export type Stopped = "max-tokens" | "eos" | "context";

/** Runs the sampler on `logits` at `position` for draw `draw`: the token id. */
async function sample(
  device: Device,
  sampler: GraphProgram,
  logits: Tensor,
  position: number,
  draw: number,
): Promise<number> {
  const out = await device.run(
    sampler,
    sampler.entries[0]!,
    new Map<string, Tensor>([
      ["logits", logits],
      ["position", { shape: [1], data: new Int32Array([position]) }],
      ["draw", { shape: [1], data: new Int32Array([draw]) }],
    ]),
  );
  return Math.round(out.get("token")!.data[0]!);
}

/**
 * The tokens after `prompt` with a KV cache (compiler/generation.ts): the prompt runs once
 * (prefill), then each token alone (decode), reading and extending every attention layer's cached
 * keys and values, which stay on the device. Stops as `generateTokens` does.
 */
export async function generateCached(
  device: Device,
  generation: GenerationProgram,
  store: ReadonlyMap<string, Tensor>,
  prompt: readonly number[],
  sampling: Sampling,
  stop: ReadonlySet<number> = new Set(),
): Promise<{ tokens: number[]; stopped: Stopped }> {
  const [prefill, decode] = generation.entries as [Entry, Entry];
  const C = generation.capacity;
  await loadProgram(device, generation);
  const first = await loadSampler(device, logitsShape(generation, prefill), sampling);
  const next = await loadSampler(device, logitsShape(generation, decode), sampling);
  const tokens = [...prompt];
  const feeds = new Map(store);
  const ids = new Int32Array(C);
  ids.set(tokens);
  feeds.set("prefill.ids", { shape: [1, C], data: ids });
  // Only the sampler's token comes back: the logits and caches stay where they were computed.
  const keep = { read: new Set<string>() };
  let out = await device.run(generation, prefill, feeds, keep);
  feeds.delete("prefill.ids");
  for (let i = 0; i < sampling.maxTokens; i++) {
    const position = tokens.length - 1; // of the last token, whose logits give the next
    const token = await sample(
      device,
      i === 0 ? first : next,
      out.get("logits")!,
      i === 0 ? position : 0,
      i,
    );
    tokens.push(token);
    if (stop.has(token)) return { tokens: tokens.slice(prompt.length), stopped: "eos" };
    if (i + 1 === sampling.maxTokens) break;
    if (tokens.length > C) return { tokens: tokens.slice(prompt.length), stopped: "context" };
    for (const { name } of generation.caches) feeds.set(name, out.get(name)!);
    feeds.set("decode.ids", { shape: [1, 1], data: new Int32Array([token]) });
    feeds.set("position", { shape: [1], data: new Int32Array([tokens.length - 1]) });
    out = await device.run(generation, decode, feeds, keep);
  }
  return { tokens: tokens.slice(prompt.length), stopped: "max-tokens" };
}

/** The tokens after `prompt`, stopping at max tokens, a token of `stop` (end of sequence) or the context. */
export async function generateTokens(
  device: Device,
  program: TrainProgram,
  store: ReadonlyMap<string, Tensor>,
  prompt: readonly number[],
  sampling: Sampling,
  stop: ReadonlySet<number> = new Set(),
): Promise<{ tokens: number[]; stopped: Stopped }> {
  const step = program.step;
  const predict = step.predict!;
  const input = step.inputs.find((i) => i.name === "batch.input")!;
  const [rows, T] = [Number(input.shape[0]), Number(input.shape[1])];
  const sampler = await loadSampler(device, logitsShape(step, predict), sampling);
  const tokens = [...prompt];
  const feeds = new Map(store);
  const data = new Int32Array(rows * T);
  // The logits stay on the device: only the sampler's one token id is read.
  const keep = { read: new Set<string>() };
  for (let i = 0; i < sampling.maxTokens; i++) {
    // Position T - 1 is the last the input holds: its logits give token T, and then it is full.
    if (tokens.length > T) return { tokens: tokens.slice(prompt.length), stopped: "context" };
    // Row 0 holds the tokens (the model is causal: what follows them does not change them).
    data.fill(0);
    data.set(tokens);
    feeds.set("batch.input", { shape: [rows, T], data });
    const logits = (await device.run(step, predict, feeds, keep)).get("logits")!;
    const next = await sample(device, sampler, logits, tokens.length - 1, i);
    tokens.push(next);
    if (stop.has(next)) return { tokens: tokens.slice(prompt.length), stopped: "eos" };
  }
  return { tokens: tokens.slice(prompt.length), stopped: "max-tokens" };
}

export async function generateCommand(
  path: string,
  options: GenerateCommandOptions,
): Promise<number> {
  const sampling = samplingOf(options);
  const usage = (message: string) => {
    process.stderr.write(`error: ${message}\n`);
    return 1;
  };
  if (typeof sampling === "string") return usage(sampling);
  if ((options.prompt === undefined) === (options.ids === undefined))
    return usage("give the prompt as --prompt TEXT or as token ids with --ids, not both");
  if (!(devices as readonly string[]).includes(options.device))
    return usage(`unknown device \`${options.device}\` (${devices.join(", ")})`);
  const read = readSource(path);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  const cached = options.kvCache !== false;
  const { compiled, diagnostics } = compiling(() =>
    compile(read.file, {
      train: options.train,
      ...(cached ? { generation: true } : {}),
    }),
  );
  if (!compiled) return report(diagnostics, options) || 1;
  const program = compiled.program;
  const run = runOrDiagnostic(program);
  if ("severity" in run) return report([run], options);
  const fail = (message: string, help: string): number =>
    report([...diagnostics, error("E0501", message, program.data.at, { help })], options);
  const input = program.step.inputs.find((i) => i.name === "batch.input");
  if (!program.step.predict || !input || input.shape.length !== 2)
    return fail(
      "`lrkc generate` needs a language model: the block's data has no token `input` [B, T]",
      "generate from a block whose data is token sequences (std.data.text, std.data.jsonl)",
    );
  const T = Number(input.shape[1]);

  let tokenizer: Tokenizer | undefined;
  let prompt: number[];
  try {
    tokenizer = findTokenizer(run, program, options.tokenizer);
    if (options.ids !== undefined) {
      prompt = options.ids
        .split(/[\s,]+/)
        .filter((s) => s !== "")
        .map(Number);
      if (prompt.some((id) => !Number.isInteger(id) || id < 0 || id >= program.data.vocab))
        return usage(`--ids must be token ids from 0 to ${program.data.vocab - 1}`);
    } else {
      if (!tokenizer)
        return fail(
          "there is no tokenizer to read --prompt with",
          "give --tokenizer FOLDER (a Hugging Face folder with tokenizer.json), or token ids with --ids",
        );
      // A chat template writes the special tokens itself (as apply_chat_template's tokenizing).
      prompt = options.chat
        ? tokenizer.encode(
            renderChat(tokenizer, [{ role: "user", content: options.prompt! }], true),
            { special: false },
          )
        : tokenizer.encode(options.prompt!);
    }
  } catch (e) {
    if (e instanceof TokenizerError || e instanceof TemplateError)
      return fail(e.message, e.help ?? "check the tokenizer folder");
    throw e;
  }
  if (prompt.length === 0) return usage("the prompt has no tokens");
  if (prompt.length > T)
    return fail(
      `the prompt has ${prompt.length} tokens, more than the model's input length of ${T}`,
      "use a shorter prompt, or a data `context` at least as long as prompt and generation",
    );
  if (prompt.some((id) => id >= program.data.vocab))
    return fail(
      `the tokenizer's ids reach ${Math.max(...prompt)}, past the model's vocabulary of ${program.data.vocab}`,
      "use the tokenizer of this model",
    );

  let start: ReturnType<typeof startingPoint>;
  try {
    // generate has no --init-adapters: only the block's setting, which --weights replaces
    start = startingPoint(compiled, options.weights, undefined, () => undefined);
  } catch (e) {
    const failure = failureDiagnostic(e, { program, checkpointFromCommandLine: true });
    if (failure) return report([failure], options);
    throw e;
  }
  const { weights, adapters } = start;
  const device = await openDeviceOrDiagnostic(options.device);
  if ("severity" in device) return report([device], options);
  try {
    await loadPlans(device, program, { autotune: options.autotune !== false });
    const store = await initializeWithWeights(program, device, weights?.tensors, {
      data: run.data,
      ...(adapters ? { adapters } : {}),
    });
    // the tokenizer's eos, and generation_config.json's, as transformers' generate stops at any
    const eos = new Set([
      ...(tokenizer?.eosId !== undefined ? [tokenizer.eosId] : []),
      ...(tokenizer?.stopIds ?? []),
    ]);
    const generation = program.generation;
    if (generation && "reason" in generation && !options.json)
      process.stderr.write(
        `note: no KV cache: ${generation.reason}; every token recomputes the prefix\n`,
      );
    const started = performance.now();
    const { tokens, stopped } =
      generation && !("reason" in generation)
        ? await generateCached(device, generation, store, prompt, sampling, eos)
        : await generateTokens(device, program, store, prompt, sampling, eos);
    const text = tokenizer?.decode(tokens, { skipSpecial: true });
    const notes: Diagnostic[] = [];
    if (stopped === "context" && !options.json)
      process.stderr.write(
        `note: stopped after ${tokens.length} tokens: the model's input holds ${T} (the data's context)\n`,
      );
    if (options.json)
      return report([...diagnostics, ...notes], options, {
        result: {
          prompt: prompt,
          tokens,
          ...(text !== undefined ? { text } : {}),
          stopped,
          kv_cache: generation !== undefined && !("reason" in generation),
          // prefill and every token, kernels' first-use compilation included
          tokens_per_s: tokens.length / ((performance.now() - started) / 1000),
        },
      });
    report(diagnostics, options);
    process.stdout.write(text !== undefined ? `${text}\n` : `${tokens.join(" ")}\n`);
    return 0;
  } catch (e) {
    const failure = failureDiagnostic(e, { program });
    if (failure) return report([failure], options);
    throw e;
  } finally {
    (device as { destroy?: () => void }).destroy?.();
  }
}
