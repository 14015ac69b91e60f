// Hugging Face checkpoint folders in the layouts real ones come in, made from the fixtures of
// tests/fixtures/hf by rewriting their files here (each a few KB, in a temporary folder): every
// float dtype and mixes of them in one file, integer and BOOL buffers the model never reads,
// safetensors metadata, a tied head saved anyway, pickled checkpoints. Each either matches the
// fixture's PyTorch reference (the same bound as tests/hf-models.test.ts) or is refused with a
// diagnostic that says what is wrong and how to fix it.
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Tensor } from "../compiler/program.js";
import { tokenizerVocab } from "../compiler/tokenizer-vocab.js";
import { CpuDevice } from "../runtime/device.js";
import { renderChat } from "../runtime/chat-template.js";
import { readPeftFolder } from "../runtime/peft.js";
import { CheckpointError, readSafetensors } from "../runtime/safetensors.js";
import { hasTokenizer, parseTokenizer, readTokenizer } from "../runtime/tokenizer.js";
import { initialize } from "../runtime/trainer.js";
import { expectMatches, fixtures, program, writeRaw, type Raw, type Stored } from "./hf-helpers.js";

/** A fixture's tensors, each to be stored as `dtypeOf` says. */
function fixtureRaw(folder: string, dtypeOf: (name: string) => Stored): Map<string, Raw> {
  const tensors: Map<string, Tensor> = readSafetensors(
    join(fixtures, folder, "model.safetensors"),
  ).tensors;
  return new Map(
    [...tensors].map(([name, t]) => [
      name,
      { dtype: dtypeOf(name), shape: [...t.shape].map(Number), values: t.data },
    ]),
  );
}

const cpu = new CpuDevice({ float64: false });

describe("Hugging Face folders as they come: dtypes, buffers, metadata", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-hf-layouts-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A folder `name` in `dir` with `from`'s config.json and the given model.safetensors. */
  function folder(
    name: string,
    from: string,
    tensors: ReadonlyMap<string, Raw>,
    metadata?: Record<string, string>,
  ): string {
    mkdirSync(join(dir, name));
    cpSync(join(fixtures, from, "config.json"), join(dir, name, "config.json"));
    writeRaw(join(dir, name, "model.safetensors"), tensors, metadata);
    return name;
  }

  it("F64 weights (a float64 save) load and match", async () => {
    const name = folder(
      "gpt2-f64",
      "gpt2",
      fixtureRaw("gpt2", () => "F64"),
    );
    await expectMatches(cpu, program("GPT2", name, dir), "gpt2");
  });

  it("one file mixing BF16, F16, F32 and F64, with {format: pt} metadata, matches", async () => {
    // the bf16 fixture's values are BF16-exact; those that are also F16-exact are stored as F16
    let i = 0;
    const mix: Stored[] = ["BF16", "F32", "F64", "BF16"];
    const raw = fixtureRaw("llama-bf16", () => mix[i++ % mix.length]!);
    const norm = raw.get("model.norm.weight")!;
    raw.set("model.norm.weight", { ...norm, dtype: "F16" });
    const name = folder("llama-mixed", "llama-bf16", raw, { format: "pt" });
    await expectMatches(cpu, program("Llama", name, dir), "llama-bf16");
  });

  it("integer and BOOL buffers (masked_bias, position ids, inv_freq) are left out with a note", async () => {
    const raw = fixtureRaw("llama", () => "F32");
    raw.set("model.layers.0.self_attn.rotary_emb.inv_freq", {
      dtype: "F32",
      shape: [4],
      values: [1, 0.1, 0.01, 0.001],
    });
    raw.set("model.position_ids", { dtype: "I64", shape: [1, 4], values: [0, 1, 2, 3] });
    raw.set("model.layers.1.self_attn.mask", {
      dtype: "BOOL",
      shape: [2, 2],
      values: [1, 0, 1, 1],
    });
    raw.set("model.layers.1.self_attn.count", { dtype: "I32", shape: [1], values: [7] });
    const name = folder("llama-buffers", "llama", raw);
    const run = program("Llama", name, dir);
    const notes: string[] = [];
    await initialize(run.program, cpu, { onNote: (n) => notes.push(n) });
    expect(notes.join("\n")).toContain("holds 4 tensors the model does not use, left out");
    expect(notes.join("\n")).toContain("`model.layers.0.self_attn.rotary_emb.inv_freq`");
    await expectMatches(cpu, run, "llama");
  });

  it("a tied head saved anyway (lm_head.weight beside wte) loads, with a note", async () => {
    const raw = fixtureRaw("gpt2", () => "F32");
    raw.set("lm_head.weight", { ...raw.get("transformer.wte.weight")! });
    const name = folder("gpt2-head", "gpt2", raw);
    const run = program("GPT2", name, dir);
    const notes: string[] = [];
    await initialize(run.program, cpu, { onNote: (n) => notes.push(n) });
    expect(notes.join("\n")).toContain("`lm_head.weight`");
    await expectMatches(cpu, run, "gpt2");
  });
});

describe("config.json variants against PyTorch (scripts/hf-fixtures.py)", () => {
  it("head_dim other than hidden_size / num_attention_heads (as Qwen3's and Gemma's)", () =>
    expectMatches(cpu, program("Llama", "llama-head-dim"), "llama-head-dim"));

  it("a config with only the required fields gets LlamaConfig's defaults (MHA, eps, theta, untied)", () =>
    expectMatches(cpu, program("Llama", "llama-minimal-config"), "llama-minimal-config"));
});

describe("config.json as transformers 5 saves it: `rope_parameters` in place of rope_theta and rope_scaling", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-hf-rope-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** `from`'s folder with its config's rope fields moved into `rope_parameters`. */
  function v5(from: string): string {
    const name = `${from}-v5`;
    cpSync(join(fixtures, from), join(dir, name), { recursive: true });
    const path = join(dir, name, "config.json");
    const config = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
    const scaling = (config["rope_scaling"] ?? { rope_type: "default" }) as Record<string, unknown>;
    config["rope_parameters"] = { ...scaling, rope_theta: config["rope_theta"] };
    delete config["rope_theta"];
    delete config["rope_scaling"];
    writeFileSync(path, JSON.stringify(config));
    return name;
  }

  it("Llama 3's scaling and theta 500 from rope_parameters", () =>
    expectMatches(cpu, program("Llama", v5("llama3-rope"), dir), "llama3-rope"));

  it("Qwen2's theta 1e6 from rope_parameters (rope_type default)", () =>
    expectMatches(cpu, program("Qwen2", v5("qwen2"), dir), "qwen2"));

  it("rope_parameters for each kind of layer is refused, naming them", () => {
    const name = v5("llama");
    const path = join(dir, name, "config.json");
    const config = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
    config["rope_parameters"] = { full_attention: config["rope_parameters"] };
    writeFileSync(path, JSON.stringify(config));
    expect(() => program("Llama", name, dir)).toThrow(
      /E0502: .*`rope_parameters` holds parameters for each kind of layer \(full_attention\)/,
    );
  });
});

describe("num_key_value_heads left out of a config.json", () => {
  it("is MistralConfig's default 8 (null is multi-head attention), as transformers reads it", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-kv-"));
    try {
      const kvRows = (value: "absent" | null) => {
        const name = `mistral-${String(value)}`;
        mkdirSync(join(dir, name));
        const config = JSON.parse(
          readFileSync(join(fixtures, "mistral", "config.json"), "utf8"),
        ) as Record<string, unknown>;
        // 16 heads of 2 on a hidden size of 32: 8 key/value heads are 16 rows, 16 are 32
        Object.assign(config, { num_attention_heads: 16, head_dim: 2 });
        if (value === "absent") delete config["num_key_value_heads"];
        else config["num_key_value_heads"] = null;
        writeFileSync(join(dir, name, "config.json"), JSON.stringify(config));
        const params = program("Mistral", name, dir).program.params;
        return params.find((p) => p.path === "model.layers.0.self_attn.k_proj.weight")!.shape[0];
      };
      expect(kvRows("absent")).toBe(16);
      expect(kvRows(null)).toBe(32);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("pickled and adapter folders are refused, saying how to convert", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-hf-pickle-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function refusal(name: string, files: string[]): Promise<CheckpointError> {
    mkdirSync(join(dir, name));
    cpSync(join(fixtures, "gpt2", "config.json"), join(dir, name, "config.json"));
    for (const file of files) writeFileSync(join(dir, name, file), "PK\u0003\u0004 not read");
    try {
      await initialize(program("GPT2", name, dir).program, cpu);
    } catch (e) {
      if (e instanceof CheckpointError) return e;
      throw e;
    }
    throw new Error("the folder was accepted");
  }

  it("pytorch_model.bin only", async () => {
    const e = await refusal("bin", ["pytorch_model.bin"]);
    expect(e.message).toContain("without model.safetensors");
    expect(e.help).toContain("pytorch_model.bin");
    expect(e.help).toContain("safe_serialization=True");
  });

  it("sharded pytorch_model-0000x-of-0000y.bin with their index", async () => {
    const e = await refusal("bin-sharded", [
      "pytorch_model.bin.index.json",
      "pytorch_model-00001-of-00002.bin",
      "pytorch_model-00002-of-00002.bin",
    ]);
    expect(e.help).toContain("pytorch_model.bin.index.json");
    expect(e.help).toContain("safe_serialization=True");
  });

  it("a PEFT adapter folder given as the base model points at its base and init_adapters", async () => {
    const e = await refusal("adapter", ["adapter_model.safetensors", "adapter_config.json"]);
    expect(e.help).toContain("base_model_name_or_path");
    expect(e.help).toContain("init_adapters");
  });

  it("a safetensors file of another name is named, with the fix", async () => {
    const e = await refusal("other", ["consolidated.safetensors"]);
    expect(e.help).toContain("`consolidated.safetensors`: pass the file itself, or rename it");
  });
});

describe("tokenizer folders as they come", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-hf-tokenizer-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const references = (model: string) =>
    JSON.parse(readFileSync(join(fixtures, model, "tokenizer-reference.json"), "utf8")) as {
      text: string;
      ids: number[];
    }[];

  it("GPT-2's vocab.json and merges.txt without tokenizer.json encode as the reference", () => {
    const folder = join(dir, "gpt2-slow");
    mkdirSync(folder);
    for (const file of ["vocab.json", "merges.txt", "tokenizer_config.json"])
      cpSync(join(fixtures, "gpt2", file), join(folder, file));
    expect(hasTokenizer(folder)).toBe(true);
    const slow = readTokenizer(folder);
    for (const { text, ids } of references("gpt2")) {
      expect(slow.encode(text)).toEqual(ids);
      expect(slow.decode(ids)).toBe(text);
    }
    expect([slow.vocabSize, slow.eosId]).toEqual([64, 0]);
    // the end-of-text token is matched whole, before BPE, as the slow tokenizer splits on it
    expect(slow.encode("hello<|endoftext|>")).toEqual([...slow.encode("hello"), 0]);
  });

  it("generation_config.json's eos_token_id (an id or a list) are stop ids", () => {
    const folder = join(dir, "llama-generation");
    cpSync(join(fixtures, "llama"), folder, { recursive: true });
    expect(readTokenizer(folder).stopIds).toBeUndefined();
    writeFileSync(join(folder, "generation_config.json"), JSON.stringify({ eos_token_id: [2, 5] }));
    expect(readTokenizer(folder).stopIds).toEqual([2, 5]);
    writeFileSync(join(folder, "generation_config.json"), JSON.stringify({ eos_token_id: 7 }));
    expect(readTokenizer(folder).stopIds).toEqual([7]);
    writeFileSync(join(folder, "generation_config.json"), JSON.stringify({ eos_token_id: "x" }));
    expect(() => readTokenizer(folder)).toThrow(/`eos_token_id` of "x", not a token id/);
  });

  it("Qwen2's layout (NFC, its Split regex, ByteLevel without regex) reads and encodes", () => {
    // Qwen2's regex splits as GPT-2's on these texts (they differ on digits, case and newlines),
    // so the fixture's GPT-2 reference ids hold for its vocabulary in Qwen2's layout
    const json = JSON.parse(readFileSync(join(fixtures, "gpt2", "tokenizer.json"), "utf8"));
    const regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    const qwen2 = parseTokenizer({
      ...json,
      normalizer: { type: "NFC" },
      pre_tokenizer: {
        type: "Sequence",
        pretokenizers: [
          { type: "Split", pattern: { Regex: regex }, behavior: "Isolated", invert: false },
          { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
        ],
      },
    });
    for (const { text, ids } of references("gpt2").filter((r) => !/[\d\n]/.test(r.text)))
      expect(qwen2.encode(text)).toEqual(ids);
  });

  it("bos and eos named only in special_tokens_map.json are read from it", () => {
    const folder = join(dir, "llama-map");
    mkdirSync(folder);
    cpSync(join(fixtures, "llama", "tokenizer.json"), join(folder, "tokenizer.json"));
    const config = JSON.parse(
      readFileSync(join(fixtures, "llama", "tokenizer_config.json"), "utf8"),
    ) as Record<string, unknown>;
    const map = { bos_token: config["bos_token"], eos_token: config["eos_token"] };
    delete config["bos_token"];
    delete config["eos_token"];
    writeFileSync(join(folder, "tokenizer_config.json"), JSON.stringify(config));
    writeFileSync(join(folder, "special_tokens_map.json"), JSON.stringify(map));
    const tokenizer = readTokenizer(folder);
    expect([tokenizer.bosId, tokenizer.eosId]).toEqual([1, 2]);
  });
});

describe("a data source's tokenizer folder with vocab.json and merges.txt", () => {
  it("has the vocabulary size the tokenizer reads", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-vocab-"));
    try {
      for (const file of ["vocab.json", "merges.txt", "tokenizer_config.json"])
        cpSync(join(fixtures, "gpt2", file), join(dir, file));
      expect(tokenizerVocab(".", join(dir, "main.lrk"))).toBe(64);
      rmSync(join(dir, "merges.txt"));
      expect(tokenizerVocab(".", join(dir, "main.lrk"))).toMatch(/cannot find the tokenizer/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("PEFT folders lrk cannot read as adapters are refused, saying how to merge them", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-hf-peft-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** The GPT-2 LoRA fixture with its config changed by `edit`, read by PEFT's rules. */
  function refusal(name: string, edit: (config: Record<string, unknown>) => void): CheckpointError {
    const folder = join(dir, name);
    cpSync(join(fixtures, "gpt2-lora-peft"), folder, { recursive: true });
    const config = JSON.parse(readFileSync(join(folder, "adapter_config.json"), "utf8")) as Record<
      string,
      unknown
    >;
    edit(config);
    writeFileSync(join(folder, "adapter_config.json"), JSON.stringify(config));
    if (name === "bin") rmSync(join(folder, "adapter_model.safetensors"));
    if (name === "bin") writeFileSync(join(folder, "adapter_model.bin"), "PK");
    try {
      readPeftFolder(folder, [], (p) => JSON.parse(readFileSync(p, "utf8")));
    } catch (e) {
      if (e instanceof CheckpointError) return e;
      throw e;
    }
    throw new Error("the adapter was accepted");
  }

  it('bias "all" or "lora_only": the base model\'s biases were trained too', () => {
    for (const bias of ["all", "lora_only"]) {
      const e = refusal(`bias-${bias}`, (c) => (c["bias"] = bias));
      expect(e.message).toContain(`\`bias: "${bias}"\``);
      expect(e.help).toContain("merge_and_unload()");
    }
  });

  it("modules_to_save: whole trained modules", () => {
    const e = refusal("saved", (c) => (c["modules_to_save"] = ["lm_head"]));
    expect(e.message).toContain('`modules_to_save: ["lm_head"]`');
    expect(e.help).toContain("merge_and_unload()");
  });

  it("adapter_model.bin only: a pickle", () => {
    const e = refusal("bin", () => {});
    expect(e.message).toContain("holds adapter_model.bin, a pickle");
    expect(e.help).toContain("safe_serialization=True");
  });
});

describe("Qwen2.5's chat template (tools, tool_calls, tojson, loop.last)", () => {
  // tokenizer_config.json's chat_template of Qwen2.5-Instruct (whitespace as published)
  const qwen25 = `{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
`;

  it("renders a conversation as apply_chat_template does: the default system turn, then ChatML", () => {
    const tokenizer = { ...readTokenizer(join(fixtures, "llama")), chatTemplate: qwen25 };
    const conversation = [
      { role: "user", content: "hello" },
      { role: "assistant", content: "hi" },
    ];
    expect(renderChat(tokenizer, conversation, true)).toBe(
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" +
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n<|im_start|>assistant\n",
    );
    const system = [{ role: "system", content: "Be brief." }, ...conversation];
    expect(renderChat(tokenizer, system)).toBe(
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n",
    );
  });
});

describe("added tokens' lstrip and rstrip (as RoBERTa-style <mask> tokens are saved)", () => {
  const gpt2 = () =>
    JSON.parse(readFileSync(join(fixtures, "gpt2", "tokenizer.json"), "utf8")) as {
      added_tokens: Record<string, unknown>[];
    };
  const withMask = (flags: Record<string, boolean>) => {
    const json = gpt2();
    json.added_tokens.push({ id: 64, content: "<mask>", special: true, ...flags });
    return parseTokenizer(json);
  };

  it("take the whitespace beside the token into it", () => {
    const plain = withMask({});
    const hello = plain.encode("hello");
    expect(plain.encode("hello <mask>")).toEqual([...plain.encode("hello "), 64]);
    expect(withMask({ lstrip: true }).encode("hello  <mask>")).toEqual([...hello, 64]);
    expect(withMask({ rstrip: true }).encode("<mask> hello")).toEqual([64, ...hello]);
    expect(withMask({ lstrip: true, rstrip: false }).encode("<mask> hello")).toEqual([
      64,
      ...plain.encode(" hello"),
    ]);
  });

  it("single_word is refused by name, not ignored", () => {
    expect(() => withMask({ single_word: true })).toThrow(/`single_word`, which lrk does not/);
  });
});

describe("GPT-2 config.json variants", () => {
  it("`n_inner: null` is 4 · n_embd; gelu_pytorch_tanh is gelu_new; exact gelu is refused", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-gpt2-config-"));
    try {
      const compiled = (edit: Record<string, unknown>) => {
        const name = `gpt2-${Math.random().toString(36).slice(2, 8)}`;
        mkdirSync(join(dir, name));
        const config = JSON.parse(
          readFileSync(join(fixtures, "gpt2", "config.json"), "utf8"),
        ) as Record<string, unknown>;
        writeFileSync(join(dir, name, "config.json"), JSON.stringify({ ...config, ...edit }));
        return program("GPT2", name, dir).program.params;
      };
      const fc = compiled({ n_inner: null, activation_function: "gelu_pytorch_tanh" }).find(
        (p) => p.path === "transformer.h.0.mlp.c_fc.weight",
      )!;
      expect(fc.shape).toEqual([32, 128]);
      expect(() => compiled({ activation_function: "gelu" })).toThrow(
        /implements activation_function "gelu_new" only/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("a Llama folder saved without its head", () => {
  it("(LlamaModel: no `model.` prefix, no lm_head) is refused, saying so", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-headless-"));
    try {
      mkdirSync(join(dir, "llama"));
      cpSync(join(fixtures, "llama", "config.json"), join(dir, "llama", "config.json"));
      const raw = fixtureRaw("llama", () => "F32");
      const base = new Map(
        [...raw]
          .filter(([name]) => name !== "lm_head.weight")
          .map(([name, t]) => [name.replace(/^model\./, ""), t] as const),
      );
      writeRaw(join(dir, "llama", "model.safetensors"), base);
      const e = await initialize(program("Llama", "llama", dir).program, cpu).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(e).toBeInstanceOf(CheckpointError);
      expect((e as CheckpointError).message).toContain("has no tensor for `lm_head.weight`");
      expect((e as CheckpointError).help).toContain("without its language-model head");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
