// Issue 13, items 3 and 5: instruction data (`std.data.jsonl`, prompt masked out of the loss),
// `std.data.text` with a Hugging Face tokenizer, and `lrkc generate` (greedy = the fixtures'
// reference tokens on the CPU interpreter and WebGPU; seeded sampling reproducible).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SourceFile } from "../language/source.js";
import { CpuDevice } from "../runtime/device.js";
import type { JsonlSource } from "../runtime/jsonl-data.js";
import type { Entry, GenerationProgram, GraphProgram, Tensor } from "../compiler/program.js";
import { samplerProgram } from "../compiler/sampler.js";
import { readTokenizer } from "../runtime/tokenizer.js";
import { batchFeeds, initialize } from "../runtime/trainer.js";
import { gpt2FixtureProgram, hfFixtures as fixtures, lrkc, root } from "./helpers.js";
import { lrkcInProcess } from "./cli-in-process.js";
import { prepare } from "./program-helpers.js";

const dir = mkdtempSync(join(tmpdir(), "lrk-generate-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  writeFileSync(join(dir, name), text);
  return join(dir, name);
}

/** A GPT-2 fixture program's text over `data` (a `std.data…` call). */
const gpt2Text = (data: string) =>
  gpt2FixtureProgram({ data, dataName: "d", rules: "  optimize ** with adamw(lr: 1e-4)" });

/** The GPT-2 fixture program over `data`, compiled as a file in `dir`. */
const gpt2Program = (data: string) =>
  prepare(new SourceFile(join(dir, "main.lrk"), gpt2Text(data)));

describe("std.data.text with a tokenizer", () => {
  it("windows are token ids of the Hugging Face tokenizer, and data.vocab is its size", () => {
    write("corpus.txt", "the cat sat on the mat. the dog sat on the log. ".repeat(8));
    const { run, diagnostics } = gpt2Program(
      `std.data.text("corpus.txt", context: 6, tokenizer: "${join(fixtures, "gpt2")}")`,
    );
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    expect(run!.program.data.vocab).toBe(64);
    const ids = readTokenizer(join(fixtures, "gpt2")).encode(
      "the cat sat on the mat. the dog sat on the log. ".repeat(8),
    );
    const batch = run!.data.batch("valid", 0, 1);
    const input = [...batch.fields["input"]!.data];
    const at = ids.findIndex((_, i) => input.every((x, k) => ids[i + k] === x));
    expect(at).toBeGreaterThanOrEqual(0);
    expect([...batch.fields["target"]!.data]).toEqual(ids.slice(at + 1, at + 7));
  });

  it("text the tokenizer cannot encode is an E0501 naming the file, not a crash", () => {
    write("zoo.txt", "zoo ".repeat(40));
    const r = lrkc([
      "check",
      write(
        "zoo.lrk",
        gpt2Text(`std.data.text("zoo.txt", context: 6, tokenizer: "${join(fixtures, "gpt2")}")`),
      ),
    ]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/E0501[\s\S]*"zoo.txt": the tokenizer has no token for "z"/);
  });

  it("a missing tokenizer folder is an E0501 at the declaration", () => {
    const { diagnostics } = gpt2Program(
      `std.data.text("corpus.txt", context: 6, tokenizer: "no-such-folder")`,
    );
    const e = diagnostics.find((d) => d.code === "E0501");
    expect(e?.message).toMatch(/cannot find the tokenizer "no-such-folder"/);
    const named = gpt2Program(`std.data.text("corpus.txt", context: 6, tokenizer: bpe)`);
    expect(named.diagnostics.find((d) => d.code === "E0501")?.message).toMatch(
      /no tokenizer `bpe`: use `bytes` or the folder/,
    );
  });
});

describe("std.data.jsonl", () => {
  const lines = [
    { prompt: "the cat", completion: " sat on the mat." },
    { prompt: "hello", completion: " world" },
    { prompt: "it's a", completion: " dog's life" },
  ];
  write("chat.jsonl", lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
  const tokenizer = readTokenizer(join(fixtures, "gpt2"));

  it("targets are the completion's tokens and eos; the prompt's are -1", () => {
    const { run, diagnostics } = gpt2Program(
      `std.data.jsonl("chat.jsonl", tokenizer: "${join(fixtures, "gpt2")}", context: 12)`,
    );
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    const data = run!.data as JsonlSource;
    expect([data.trainSize, data.validSize]).toEqual([2, 1]);
    const { input, target } = data.example("train", 1);
    const prompt = tokenizer.encode("hello");
    const completion = [...tokenizer.encode(" world"), 0];
    const ids = [...prompt, ...completion];
    expect([...input.slice(0, ids.length - 1)]).toEqual(ids.slice(0, -1));
    expect([...target]).toEqual([
      ...prompt.slice(1).map(() => -1),
      ...completion,
      ...new Array(12 - (ids.length - 1)).fill(-1),
    ]);
  });

  it("prompt and completion are tokenized whole: no word-start mark is added to a Llama completion", async () => {
    const { openDataSet } = await import("../runtime/data.js");
    write("llama.jsonl", JSON.stringify({ prompt: "hello", completion: " world" }) + "\n");
    const llama = readTokenizer(join(fixtures, "llama"));
    const data = openDataSet(
      {
        source: "jsonl",
        args: { path: "llama.jsonl", tokenizer: join(fixtures, "llama"), context: 16, seed: 0 },
        vocab: 64,
        fields: {},
        help: "",
        at: { file: new SourceFile(join(dir, "x.lrk"), "") } as never,
      },
      { baseDir: dir },
    ) as JsonlSource;
    const ids = [...llama.encode("hello world"), 2];
    const prompt = llama.encode("hello");
    expect(ids.slice(0, prompt.length)).toEqual(prompt);
    // Tokenizing " world" alone would start with an extra "▁".
    expect(llama.encode(" world", { special: false })).not.toEqual(ids.slice(prompt.length, -1));
    const { input, target } = data.example("train", 0);
    expect([...input.slice(0, ids.length - 1)]).toEqual(ids.slice(0, -1));
    expect([...target.slice(0, ids.length - 1)]).toEqual([
      ...prompt.slice(1).map(() => -1),
      ...ids.slice(prompt.length),
    ]);
  });

  it("the loss is the mean cross-entropy over completion tokens only (a hand computation)", async () => {
    const { run } = gpt2Program(
      `std.data.jsonl("chat.jsonl", tokenizer: "${join(fixtures, "gpt2")}", context: 12)`,
    );
    const cpu = new CpuDevice({ float64: false });
    const store = await initialize(run!.program, cpu);
    const feeds = batchFeeds(run!, store, "train", 0, 1);
    const step = run!.step;
    const loss = (await cpu.run(step, step.evaluate, feeds)).get("loss")!.data[0]!;
    const logits = (await cpu.run(step, step.predict!, feeds)).get("logits")!.data;
    const target = feeds.get("batch.target")!.data;
    const vocab = 64;
    let sum = 0;
    let count = 0;
    for (let p = 0; p < target.length; p++) {
      const t = target[p]!;
      if (t < 0) continue;
      const row = Array.from({ length: vocab }, (_, v) => logits[p * vocab + v]!);
      const max = Math.max(...row);
      const lse = max + Math.log(row.reduce((a, x) => a + Math.exp(x - max), 0));
      sum += lse - row[t]!;
      count++;
    }
    expect(count).toBeGreaterThan(0);
    expect(count).toBeLessThan(target.length);
    expect(Math.abs(loss - sum / count)).toBeLessThan(1e-5 * Math.abs(sum / count));
  });

  it("a byte-order mark and CRLF line ends are read", () => {
    write(
      "bom.jsonl",
      '\uFEFF{"prompt": "hello", "completion": " world"}\r\n{"prompt": "the", "completion": " cat"}\r\n',
    );
    const { run, diagnostics } = gpt2Program(
      `std.data.jsonl("bom.jsonl", tokenizer: "${join(fixtures, "gpt2")}", context: 8)`,
    );
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    expect(run!.data.trainSize + run!.data.validSize).toBe(2);
  });

  it("a malformed line is an E0501 with file:line", () => {
    write("bad.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n');
    const main = write(
      "bad.lrk",
      gpt2Text(`std.data.jsonl("bad.jsonl", tokenizer: "${join(fixtures, "gpt2")}", context: 8)`),
    );
    const r = lrkc(["check", main]);
    expect(r.stderr).toMatch(/E0501/);
    expect(r.stderr).toMatch(/bad\.jsonl:2: not valid JSON/);
    write("bad.jsonl", '\n{"prompt": "a", "answer": "b"}\n');
    const again = lrkc(["check", main]);
    expect(again.stderr).toMatch(/bad\.jsonl:2: an example needs "prompt" and "completion"/);
  });

  it("messages are rendered with the chat template; only the assistant's tokens are targets", async () => {
    const { openDataSet } = await import("../runtime/data.js");
    write(
      "conv.jsonl",
      JSON.stringify({
        messages: [
          { role: "user", content: "hello" },
          { role: "assistant", content: "world" },
        ],
      }) + "\n",
    );
    const llama = readTokenizer(join(fixtures, "llama"));
    const data = openDataSet(
      {
        source: "jsonl",
        args: { path: "conv.jsonl", tokenizer: join(fixtures, "llama"), context: 24, seed: 0 },
        vocab: 64,
        fields: {},
        help: "",
        at: { file: new SourceFile(join(dir, "x.lrk"), "") } as never,
      },
      { baseDir: dir },
    ) as JsonlSource;
    const full = llama.encode("<s>[INST] hello [/INST] world </s>", { special: false });
    const user = llama.encode("<s>[INST] hello [/INST]", { special: false });
    let start = 0;
    while (user[start] === full[start]) start++;
    expect(start).toBeGreaterThan(1);
    const { input, target } = data.example("train", 0);
    expect([...input.slice(0, full.length - 1)]).toEqual(full.slice(0, -1));
    expect([...target.slice(0, full.length - 1)]).toEqual([
      ...full.slice(1, start).map(() => -1),
      ...full.slice(start),
    ]);
  });
});

/** A program in `dir` that generates with fixture `model` (text data fixes T = 12). */
type Fixture = "gpt2" | "llama" | "qwen2" | "mistral";
const modelNames: Record<Fixture, string> = {
  gpt2: "GPT2",
  llama: "Llama",
  qwen2: "Qwen2",
  mistral: "Mistral",
};

function generateProgram(model: Fixture): string {
  const folder = join(fixtures, model);
  write("corpus.txt", "the cat sat on the mat. the dog sat on the log. ".repeat(10));
  const name = modelNames[model];
  // the Qwen2 and Mistral fixtures (vocab 64, as Llama's) have no tokenizer of their own
  const tokenizer = model === "qwen2" || model === "mistral" ? join(fixtures, "llama") : folder;
  return write(
    `${model}-generate.lrk`,
    `import std.models.{${name}}
import std.optim.{adamw}

data d = std.data.text("corpus.txt", context: 12, tokenizer: "${tokenizer}")

train tune {
  model ${name}(hf_config("${folder}"))
  data d
  init "${folder}"
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-4)
  batch 1
}
`,
  );
}

/** `lrkc generate <args> --json`, in process (tests/cli-in-process.ts): its result and output. */
async function lrkcGenerate(args: string[]): Promise<{
  code: number | null;
  json?: GenerateResult;
  stderr: string;
}> {
  const r = await lrkcInProcess(["generate", ...args, "--json"], process.cwd());
  let json: GenerateResult | undefined;
  try {
    json = (JSON.parse(r.stdout) as { result?: GenerateResult }).result;
  } catch {
    // Not JSON: the test's expectations say what went wrong.
  }
  return { code: r.status, ...(json ? { json } : {}), stderr: r.stderr + r.stdout };
}

interface GenerateResult {
  prompt: number[];
  tokens: number[];
  text?: string;
  stopped: string;
}

describe("lrkc generate", () => {
  for (const device of ["cpu", "webgpu"]) {
    for (const model of ["gpt2", "llama", "mistral"] as const) {
      it(`--temperature 0 reproduces ${model}'s reference greedy tokens (${device})`, async () => {
        const ref = JSON.parse(readFileSync(join(fixtures, model, "reference.json"), "utf8")) as {
          prompt: number[];
          greedy: number[];
        };
        const r = await lrkcGenerate([
          generateProgram(model),
          "--ids",
          ref.prompt.join(","),
          "--max-tokens",
          String(ref.greedy.length),
          "--device",
          device,
        ]);
        expect(r.stderr).not.toMatch(/error\[|error:/);
        expect(r.code).toBe(0);
        expect(r.json!.tokens).toEqual(ref.greedy);
      });
    }
  }

  it("--prompt is read with the model's tokenizer, and the text is decoded", async () => {
    const tokenizer = readTokenizer(join(fixtures, "gpt2"));
    const r = await lrkcGenerate([
      generateProgram("gpt2"),
      "--prompt",
      "the cat",
      "--max-tokens",
      "4",
      "--device",
      "cpu",
    ]);
    expect(r.code).toBe(0);
    expect(r.json!.prompt).toEqual(tokenizer.encode("the cat"));
    expect(r.json!.text).toBe(tokenizer.decode(r.json!.tokens));
  });

  it("--chat sends the prompt through the chat template, as a user message", async () => {
    const tokenizer = readTokenizer(join(fixtures, "llama"));
    const r = await lrkcGenerate([
      generateProgram("llama"),
      "--prompt",
      "hello",
      "--chat",
      "--max-tokens",
      "1",
      "--device",
      "cpu",
    ]);
    expect(r.code).toBe(0);
    expect(r.json!.prompt).toEqual(tokenizer.encode("<s>[INST] hello [/INST]", { special: false }));
    const none = await lrkcGenerate([
      generateProgram("gpt2"),
      "--prompt",
      "hello",
      "--chat",
      "--device",
      "cpu",
    ]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/E0501[\s\S]*has no chat template/);
  });

  it("seeded sampling draws the same tokens on the CPU interpreter and on WebGPU", async () => {
    const program = generateProgram("llama");
    const run = async (device: string) =>
      (
        await lrkcGenerate([
          program,
          "--ids",
          "3,14,15,9",
          "--max-tokens",
          "8",
          "--temperature",
          "1.5",
          "--top-p",
          "0.9",
          "--seed",
          "11",
          "--device",
          device,
        ])
      ).json!.tokens;
    const cpu = await run("cpu");
    expect(cpu).toHaveLength(8);
    expect(await run("webgpu")).toEqual(cpu);
  });

  it("seeded sampling is reproducible, and another seed draws differently", async () => {
    const program = generateProgram("gpt2");
    const run = async (seed: string) =>
      (
        await lrkcGenerate([
          program,
          "--ids",
          "3,14,15,9",
          "--max-tokens",
          "8",
          "--temperature",
          "2",
          "--top-p",
          "0.95",
          "--seed",
          seed,
          "--device",
          "cpu",
        ])
      ).json!.tokens;
    const a = await run("1");
    expect(await run("1")).toEqual(a);
    expect([await run("2"), await run("3")]).not.toEqual([a, a]);
  });

  it("stops when the model's input is full, and says so", () => {
    const r = lrkc([
      "generate",
      generateProgram("gpt2"),
      "--ids",
      "3,14,15,9",
      "--max-tokens",
      "20",
      "--device",
      "cpu",
    ]);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/stopped after 9 tokens: the model's input holds 12/);
  });

  it("diagnostics: both or neither of --prompt/--ids, a prompt longer than the input, bad flags", async () => {
    const program = generateProgram("gpt2");
    expect((await lrkcGenerate([program])).stderr).toMatch(
      /--prompt TEXT or as token ids with --ids/,
    );
    const long = await lrkcGenerate([
      program,
      "--ids",
      Array(13).fill(3).join(","),
      "--device",
      "cpu",
    ]);
    expect(long.code).toBe(1);
    expect(long.stderr).toMatch(/13 tokens, more than the model's input length of 12/);
    expect((await lrkcGenerate([program, "--ids", "3", "--top-p", "0"])).stderr).toMatch(
      /--top-p must be/,
    );
    expect((await lrkcGenerate([program, "--ids", "64"])).stderr).toMatch(
      /--ids must be token ids from 0 to 63/,
    );
    // A model that is no language model, and a tokenizer whose ids the model has no row for.
    const moons = await lrkcGenerate([
      join(root, "examples", "mlp.lrk"),
      "--ids",
      "1",
      "--device",
      "cpu",
    ]);
    expect(moons.code).toBe(1);
    expect(moons.stderr).toMatch(/E0501[\s\S]*needs a language model/);
    const big = JSON.parse(readFileSync(join(fixtures, "gpt2", "tokenizer.json"), "utf8"));
    big.added_tokens.push({ id: 99, content: "<|big|>", special: true });
    mkdirSync(join(dir, "big"), { recursive: true });
    writeFileSync(join(dir, "big", "tokenizer.json"), JSON.stringify(big));
    const mismatch = await lrkcGenerate([
      program,
      "--prompt",
      "<|big|>",
      "--tokenizer",
      join(dir, "big"),
      "--device",
      "cpu",
    ]);
    expect(mismatch.code).toBe(1);
    expect(mismatch.stderr).toMatch(/ids reach 99, past the model's vocabulary of 64/);
  });
});

describe("the KV cache (compiler/generation.ts)", () => {
  /** The generate program of fixture `model`, compiled with its cached generation program. */
  function cachedRun(model: Fixture) {
    const path = generateProgram(model);
    const { run, diagnostics } = prepare(new SourceFile(path, readFileSync(path, "utf8")), {
      generation: true,
    });
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    const generation = run!.program.generation as GenerationProgram;
    expect(generation.entries.map((e) => e.name)).toEqual(["prefill", "decode"]);
    return { run: run!, generation };
  }

  // Qwen2: biases on q, k, v; Mistral: a 3-token sliding window, read at the token's position
  for (const model of ["gpt2", "llama", "qwen2", "mistral"] as const) {
    it(`${model}: decode's logits at every position are the full recomputation's`, async () => {
      const { run, generation } = cachedRun(model);
      const cpu = new CpuDevice({ float64: false });
      const store = await initialize(run.program, cpu);
      const C = generation.capacity;
      expect(C).toBe(12);
      // the whole sequence at once (the step's predict entry, row 0), as before the cache
      const sequence = [3, 14, 15, 9, 26, 5, 35, 8, 9, 7, 9, 32];
      const feeds = new Map(store);
      const rows = Number(run.step.inputs.find((i) => i.name === "batch.input")!.shape[0]);
      const full = new Int32Array(rows * C);
      full.set(sequence);
      feeds.set("batch.input", { shape: [rows, C], data: full });
      const want = (await cpu.run(run.step, run.step.predict!, feeds)).get("logits")!.data;
      const V = run.program.data.vocab;
      const [prefill, decode] = generation.entries as [Entry, Entry];
      const prompt = 4;
      const ids = new Int32Array(C);
      ids.set(sequence.slice(0, prompt));
      feeds.set("prefill.ids", { shape: [1, C], data: ids });
      let out = await cpu.run(generation, prefill, feeds);
      const scale = Math.max(...[...want].map(Math.abs));
      const worst = (got: ArrayLike<number>, at: number, position: number) => {
        let max = 0;
        for (let v = 0; v < V; v++)
          max = Math.max(max, Math.abs(got[at * V + v]! - want[position * V + v]!));
        return max / scale;
      };
      for (let p = 0; p < prompt; p++)
        expect(worst(out.get("logits")!.data, p, p)).toBeLessThan(1e-5);
      for (let p = prompt; p < C; p++) {
        for (const { name } of generation.caches) feeds.set(name, out.get(name)!);
        feeds.set("decode.ids", { shape: [1, 1], data: new Int32Array([sequence[p]!]) });
        feeds.set("position", { shape: [1], data: new Int32Array([p]) });
        out = await cpu.run(generation, decode, feeds);
        expect(worst(out.get("logits")!.data, 0, p), `position ${p}`).toBeLessThan(1e-5);
      }
    });
  }

  it("caches each attention layer's keys and values (Llama's per key/value head, before repeat_kv)", () => {
    const gpt2 = cachedRun("gpt2").generation;
    const llama = cachedRun("llama").generation;
    const config = JSON.parse(readFileSync(join(fixtures, "llama", "config.json"), "utf8"));
    expect(gpt2.caches.map((c) => c.name)).toEqual([
      "cache:transformer.h.0.attn.0",
      "cache:transformer.h.0.attn.1",
      "cache:transformer.h.1.attn.0",
      "cache:transformer.h.1.attn.1",
    ]);
    const kv = config.num_key_value_heads;
    const width = config.head_dim ?? config.hidden_size / config.num_attention_heads;
    expect(kv).toBeLessThan(config.num_attention_heads);
    expect(llama.caches[0]).toEqual({
      name: "cache:model.layers.0.self_attn.0",
      shape: [1, kv, 12, width],
    });
  });

  it("decode's work per token does not grow with the prefix: a fixed graph, 1/T of the recomputation's matmuls", () => {
    const { run, generation } = cachedRun("gpt2");
    const [prefill, decode] = generation.entries as [Entry, Entry];
    const perToken = matmulFlops(generation, decode);
    // one graph for every position: the position is an input, not a shape
    expect(generation.inputs.find((i) => i.name === "position")!.shape).toEqual([1]);
    expect(generation.inputs.find((i) => i.name === "decode.ids")!.shape).toEqual([1, 1]);
    // recomputing (the step's predict, one row of T = 12) costs about T times as much per token
    const rows = Number(run.step.inputs.find((i) => i.name === "batch.input")!.shape[0]);
    const recompute = matmulFlops(run.step, run.step.predict!) / rows;
    expect(matmulFlops(generation, prefill)).toBe(recompute);
    expect(perToken * 6).toBeLessThan(recompute);
  });

  it("outside generation, token_positions/causal_mask/kv_cache are arange/tril(ones)/the identity, node for node", () => {
    const source = (pos: string, mask: string, cache: string) => `import std.nn.{Embedding}
import std.optim.{adamw}

model M(vocab: int) {
  emb = Embedding(vocab, 8)

  forward(ids: i32[B, T]) -> f32[B, T, vocab] {
    let x = emb(ids) + reshape(f32(${pos}), [1, T, 1])
    let k = ${cache}
    let s = where(${mask} > 0, x @ k^T, -1e9)
    return (softmax(s, axis: -1) @ x) @ emb.weight^T
  }
}

train t {
  model M(vocab: 16)
  data std.data.arithmetic(ops: "+", digits: 1)
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-3)
  batch 2
}
`;
    const graph = (text: string) => {
      const { run, diagnostics } = prepare(new SourceFile(join(dir, "same.lrk"), text));
      expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
      return run!.step.graph.nodes.map((n) => JSON.stringify([n.op, n.inputs, n.shape, n.dtype]));
    };
    const cached = graph(source("token_positions(T)", "causal_mask(T, T)", "kv_cache(x, axis: 1)"));
    const plain = graph(source("arange(T)", "tril(ones(T, T))", "x"));
    expect(cached.length).toBeGreaterThan(50);
    expect(cached).toEqual(plain);
  });

  it("a model without kv_cache is generated by recomputation, with a note", () => {
    const tiny = write(
      "tiny-generate.lrk",
      `${readFileSync(join(root, "examples", "tiny_lm.lrk"), "utf8")}
import std.optim.{adamw}

train t {
  model TinyLM(vocab: 16, d: 16, layers: 1, heads: 2, ctx: 16)
  data std.data.arithmetic(ops: "+", digits: 1)
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-3)
  batch 1
}
`,
    );
    const r = lrkc(["generate", tiny, "--ids", "1,10,2", "--max-tokens", "3", "--device", "cpu"]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain("note: no KV cache: the model's forward keeps no `kv_cache`");
  });

  it("a model that cannot run one token at a time (kv_cache on the wrong axis) is recomputed, with the reason", () => {
    const bad = write(
      "bad-cache.lrk",
      `import std.nn.{Embedding}
import std.optim.{adamw}

model Bad(vocab: int) {
  emb = Embedding(vocab, 8)

  forward(ids: i32[B, T]) -> f32[B, T, vocab] {
    let x = emb(ids) + reshape(f32(token_positions(T)), [1, T, 1])
    return kv_cache(x, axis: 0) @ emb.weight^T
  }
}

train t {
  model Bad(vocab: 16)
  data std.data.arithmetic(ops: "+", digits: 1)
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-3)
  batch 1
}
`,
    );
    const generate = (...flags: string[]) =>
      lrkc(["generate", bad, "--ids", "1,10,2", "--max-tokens", "3", "--device", "cpu", ...flags]);
    const r = generate();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(
      "note: no KV cache: the model cannot run one token at a time: `kv_cache` of f32[1, 6, 8]: its axis 0 must run over the 6 positions being computed",
    );
    expect(r.stdout).toBe(generate("--no-kv-cache").stdout);
  });

  it("sampling with the cache draws what recomputation draws (seeded, CPU and WebGPU)", async () => {
    const program = generateProgram("gpt2");
    const run = async (device: string, ...flags: string[]) =>
      (
        await lrkcGenerate([
          program,
          "--ids",
          "3,14,15,9",
          "--max-tokens",
          "8",
          "--temperature",
          "1.5",
          "--seed",
          "7",
          "--device",
          device,
          ...flags,
        ])
      ).json!.tokens;
    const recomputed = await run("cpu", "--no-kv-cache");
    expect(recomputed).toHaveLength(8);
    expect(await run("cpu")).toEqual(recomputed);
    expect(await run("webgpu")).toEqual(recomputed);
  });
});

/** 2·M·N·K of every matmul an entry computes. */
function matmulFlops(program: GraphProgram, entry: Entry): number {
  const graph = program.graph;
  const seen = new Set<number>();
  const stack = entry.outputs.map((o) => o.node);
  let flops = 0;
  while (stack.length) {
    const id = stack.pop()!;
    if (seen.has(id)) continue;
    seen.add(id);
    const node = graph.node(id);
    if (node.op.kind === "matmul") {
      const a = graph.shape(node.inputs[0]!);
      const k = node.op.transA ? a.at(-2)! : a.at(-1)!;
      flops += 2 * node.shape.reduce((x, y) => x * y, 1) * k;
    }
    stack.push(...node.inputs);
  }
  return flops;
}

describe("the sampler graph (compiler/sampler.ts) on the CPU interpreter", () => {
  const cpu = new CpuDevice({ float64: false });
  // Logits [B = 1, T = 2, V = 4]; position 1 is the row sampled (position 0 is a decoy).
  const row = [0.5, 2, 1, -1];
  const logits = { shape: [1, 2, 4], data: new Float32Array([9, 0, 0, 0, ...row]) };
  async function draws(temperature: number, topP: number, count: number): Promise<number[]> {
    const sampler = samplerProgram({ logits: [1, 2, 4], temperature, topP, seed: 5 });
    const out: number[] = [];
    for (let i = 0; i < count; i++) {
      const feeds = new Map<string, Tensor>([
        ["logits", logits],
        ["position", { shape: [1], data: new Int32Array([1]) }],
        ["draw", { shape: [1], data: new Int32Array([i]) }],
      ]);
      out.push((await cpu.run(sampler, sampler.entries[0]!, feeds)).get("token")!.data[0]!);
    }
    return out;
  }

  it("temperature 0 is the argmax of the row at the position (the lowest id on a tie)", async () => {
    expect(await draws(0, 1, 1)).toEqual([1]);
    const tie = samplerProgram({ logits: [1, 1, 3], temperature: 0, topP: 1, seed: 0 });
    const feeds = new Map<string, Tensor>([
      ["logits", { shape: [1, 1, 3], data: new Float32Array([1, 3, 3]) }],
      ["position", { shape: [1], data: new Int32Array([0]) }],
      ["draw", { shape: [1], data: new Int32Array([0]) }],
    ]);
    expect((await cpu.run(tie, tie.entries[0]!, feeds)).get("token")!.data[0]).toBe(1);
  });

  it("draws follow softmax(logits / T); top-p keeps the smallest set reaching p", async () => {
    const n = 3000;
    for (const temperature of [1, 2]) {
      const counts = [0, 0, 0, 0];
      for (const t of await draws(temperature, 1, n)) counts[t]!++;
      const w = row.map((x) => Math.exp(x / temperature));
      const z = w.reduce((a, b) => a + b, 0);
      counts.forEach((c, v) => expect(Math.abs(c / n - w[v]! / z)).toBeLessThan(0.03));
    }
    // p = 0.61, 0.22, 0.14, 0.03: top-p 0.7 keeps ids 1 and 2, in the ratio 0.61 : 0.22.
    const nucleus = await draws(1, 0.7, 1000);
    expect(new Set(nucleus)).toEqual(new Set([1, 2]));
    expect(nucleus.filter((t) => t === 1).length / 1000).toBeCloseTo(0.61 / 0.83, 1);
    expect(new Set(await draws(1, 0.5, 50))).toEqual(new Set([1]));
  });
});

describe("lrkc eval --show", () => {
  it("prints held-out predictions beside their targets (only the completion's tokens for jsonl)", () => {
    const folder = join(fixtures, "gpt2");
    write(
      "show.jsonl",
      [
        { prompt: "the cat", completion: " sat on the mat." },
        { prompt: "hello", completion: " world" },
        { prompt: "the dog", completion: " sat on the log." },
      ]
        .map((l) => JSON.stringify(l))
        .join("\n"),
    );
    const program = write(
      "show.lrk",
      gpt2Text(`std.data.jsonl("show.jsonl", tokenizer: "${folder}", context: 12)`).replace(
        "batch 2",
        "batch 1",
      ),
    );
    const text = lrkc(["eval", program, "--show", "1", "--device", "cpu"]);
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(
      /example 1\n {2}input: {5}"the dog sat on the log\."\n {2}target: {4}" sat on the log\.<\|endoftext\|>"\n {2}predicted: "/,
    );
    const json = lrkc(["eval", program, "--show", "1", "--device", "cpu", "--json"]);
    const shown = (
      JSON.parse(json.stdout) as {
        result: { shown: { targetIds: number[]; predictedIds: number[] }[] };
      }
    ).result.shown;
    const tokenizer = readTokenizer(folder);
    expect(shown[0]!.targetIds).toEqual([...tokenizer.encode(" sat on the log."), 0]);
    expect(shown[0]!.predictedIds).toHaveLength(shown[0]!.targetIds.length);
  });
});

describe("fine-tune on instruction data, then generate (WebGPU)", () => {
  it("a GPT-2 fine-tune on prompt/completion lines learns the completions, which generate writes back", async () => {
    const folder = join(fixtures, "gpt2");
    const lines = [
      ...Array.from({ length: 10 }, () => ({ prompt: "the cat", completion: " sat on the mat." })),
      ...Array.from({ length: 10 }, () => ({ prompt: "hello", completion: " world" })),
    ];
    write("tune.jsonl", lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
    const program = write(
      "tune.lrk",
      gpt2Text(`std.data.jsonl("tune.jsonl", tokenizer: "${folder}", context: 12)`)
        .replace("lr: 1e-4", "lr: 3e-3")
        .replace("batch 2", "batch 2\n  steps 40"),
    );
    const out = join(dir, "tune-run");
    const train = lrkc(["train", program, "--device", "webgpu", "--out", out]);
    expect(train.stderr).not.toMatch(/error\[|error:/);
    expect(train.status).toBe(0);
    const weights = join(out, "final.safetensors");
    for (const [prompt, completion] of [
      ["the cat", " sat on the mat."],
      ["hello", " world"],
    ] as const) {
      const r = await lrkcGenerate([
        program,
        "--weights",
        weights,
        "--prompt",
        prompt,
        "--device",
        "webgpu",
      ]);
      expect(r.json).toMatchObject({ text: completion, stopped: "eos" });
    }
  });
});
