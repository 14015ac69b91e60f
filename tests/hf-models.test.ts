// std.models' GPT-2 and Llama against Hugging Face-layout fixtures (issue 13, items 1–2): each
// checkpoint folder of tests/fixtures/hf (written by scripts/hf-fixtures.py: single file, sharded,
// F16, BF16) is loaded by `init "folder"` into a model configured by `hf_config("folder")`, and
// its logits and greedy tokens are compared with the ones an independent PyTorch implementation
// computed (reference.json). The F16 and BF16 references were computed from the rounded weights,
// so every variant is held to the same bound: max |lrk - ref| ≤ 1e-5 · max |ref| (f32 against a
// float64 reference; measured about 5e-7, and 1e-4 is what issue 13 asks; exact GELU in place of
// GPT-2's tanh form is 2e-4). Also: the loader's diagnostics for broken folders.
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { renamed, type Tensor } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import { CheckpointError, readSafetensors, writeSafetensors } from "../runtime/safetensors.js";
import { CpuDevice } from "../runtime/device.js";
import { initialize } from "../runtime/trainer.js";
import { WebGpuDevice } from "../runtime/webgpu-device.js";
import { lrkcBin } from "./helpers.js";
import {
  expectMatches,
  fixtures,
  logitsOf,
  program,
  reference,
  writeRaw,
  type Raw,
} from "./hf-helpers.js";
import { loadOnGpu, prepare } from "./program-helpers.js";

const variants = ["", "-sharded", "-f16", "-bf16"];

describe("std.models load Hugging Face checkpoints and match PyTorch (CPU interpreter, f32)", () => {
  const cpu = new CpuDevice({ float64: false });
  for (const variant of variants) {
    it(`GPT-2${variant}: logits and greedy tokens`, () =>
      expectMatches(cpu, program("GPT2", `gpt2${variant}`), `gpt2${variant}`));
    it(`Llama${variant}: logits and greedy tokens`, () =>
      expectMatches(cpu, program("Llama", `llama${variant}`), `llama${variant}`));
  }
  // Qwen2: biases on q, k, v but not o, a tied head, rope_theta 1e6. Mistral: a sliding window
  // of 3 tokens, shorter than the 8-token sequences and the 12-token greedy prefix.
  it("Qwen2: logits and greedy tokens", () =>
    expectMatches(cpu, program("Qwen2", "qwen2"), "qwen2"));
  it("Mistral with a sliding window: logits and greedy tokens", () =>
    expectMatches(cpu, program("Mistral", "mistral"), "mistral"));
  // Llama 3's rope_scaling (every frequency band), and the older {"type": "linear"} form.
  it("Llama with llama3 rope scaling: logits and greedy tokens", () =>
    expectMatches(cpu, program("Llama", "llama3-rope"), "llama3-rope"));
  it("Llama with linear rope scaling: logits and greedy tokens", () =>
    expectMatches(cpu, program("Llama", "llama-rope-linear"), "llama-rope-linear"));

  it("parameter paths are Hugging Face's", () => {
    const gpt2 = program("GPT2", "gpt2").program.params.map((p) => p.path);
    expect(gpt2).toContain("transformer.h.0.attn.c_attn.weight");
    expect(gpt2).toContain("transformer.h.1.mlp.c_proj.bias");
    expect(gpt2).not.toContain("lm_head.weight"); // tied
    const llama = program("Llama", "llama").program.params.map((p) => p.path);
    expect(llama).toContain("model.layers.0.self_attn.q_proj.weight");
    expect(llama).toContain("model.layers.1.mlp.gate_proj.weight");
    expect(llama).toContain("lm_head.weight");
  });

  it("a checkpoint saved from the base model (no `transformer.` prefix, as the hub's gpt2) loads the same", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-base-"));
    try {
      const whole = readSafetensors(join(fixtures, "gpt2", "model.safetensors")).tensors;
      const base = new Map(
        [...whole].map(([key, t]) => [key.replace(/^transformer\./, ""), t] as const),
      );
      expect(base.has("wte.weight")).toBe(true);
      cpSync(join(fixtures, "gpt2", "config.json"), join(dir, "gpt2", "config.json"));
      writeSafetensors(join(dir, "gpt2", "model.safetensors"), base);
      await expectMatches(cpu, program("GPT2", "gpt2", dir), "gpt2");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("init_rename reads a checkpoint of another layout: Meta-style Llama names, `*` segments", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-rename-"));
    try {
      // Meta's layout for the names (the values are the fixture's, so the logits must be too)
      const meta: [RegExp, string][] = [
        [/^model\.layers\.(\d+)\.self_attn\.q_proj/, "layers.$1.attention.wq"],
        [/^model\.layers\.(\d+)\.self_attn\.k_proj/, "layers.$1.attention.wk"],
        [/^model\.layers\.(\d+)\.self_attn\.v_proj/, "layers.$1.attention.wv"],
        [/^model\.layers\.(\d+)\.self_attn\.o_proj/, "layers.$1.attention.wo"],
        [/^model\.embed_tokens/, "tok_embeddings"],
        [/^lm_head/, "output"],
      ];
      const whole = readSafetensors(join(fixtures, "llama", "model.safetensors")).tensors;
      const renamedTensors = new Map(
        [...whole].map(([key, t]) => [meta.reduce((k, [re, to]) => k.replace(re, to), key), t]),
      );
      expect(renamedTensors.has("layers.1.attention.wq.weight")).toBe(true);
      cpSync(join(fixtures, "llama", "config.json"), join(dir, "llama", "config.json"));
      writeSafetensors(join(dir, "llama", "model.safetensors"), renamedTensors);
      const rules = `init_rename [
    ("layers.*.attention.wq", "model.layers.*.self_attn.q_proj"),
    ("layers.*.attention.wk", "model.layers.*.self_attn.k_proj"),
    ("layers.*.attention.wv", "model.layers.*.self_attn.v_proj"),
    ("layers.*.attention.wo", "model.layers.*.self_attn.o_proj"),
    ("tok_embeddings", "model.embed_tokens"),
    ("output", "lm_head"),
  ]`;
      await expectMatches(cpu, program("Llama", "llama", dir, rules), "llama");
      // without the rules the folder has none of the attention's weights
      const bare = program("Llama", "llama", dir);
      await expect(initialize(bare.program, cpu)).rejects.toThrow(
        /no tensor for `model\.embed_tokens\.weight`/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("init_rename's rules: prefixes with or without a trailing dot, `*` segments in order", () => {
    expect(renamed([{ from: "", to: "model." }], "layers.0.w")).toBe("model.layers.0.w");
    expect(renamed([{ from: "", to: "model" }], "layers.0.w")).toBe("model.layers.0.w");
    expect(renamed([{ from: "transformer.", to: "" }], "transformer.h.0.w")).toBe("h.0.w");
    const swap = [{ from: "h.*.*.w", to: "x.*.y.*" }];
    expect(renamed(swap, "h.1.attn.w.weight")).toBe("x.1.y.attn.weight");
    expect(renamed(swap, "h.1.w")).toBe("h.1.w"); // shorter than the pattern: unchanged
    const first = [
      { from: "a", to: "b" },
      { from: "a", to: "c" },
    ];
    expect(renamed(first, "a.z")).toBe("b.z");
  });

  it("init_rename: a value that is not (from, to) pairs is E0402 with the form to write", () => {
    expect(() => program("GPT2", "gpt2", fixtures, 'init_rename "gpt"')).toThrow(
      /E0402: `init_rename` takes a list of \(from, to\) pairs, not a string/,
    );
    expect(() => program("GPT2", "gpt2", fixtures, 'init_rename [("h", "h.*")]')).toThrow(
      /E0402: the rule \("h", "h\.\*"\) uses more `\*` in its new name than its old name matches/,
    );
  });

  it("init_rename: rules that make two names one are refused, naming both", async () => {
    const run = program("GPT2", "gpt2", fixtures, 'init_rename [("transformer.h.*", "x.y")]');
    const e = await initialize(run.program, cpu).catch((e: Error) => e);
    expect(e).toBeInstanceOf(CheckpointError);
    expect((e as CheckpointError).message).toMatch(/holds `x\.y\..*` twice, as `transformer\.h\./);
    expect((e as CheckpointError).help).toContain("init_rename");
  });

  it("tensors of dtypes lrk does not read (BOOL masks) are fine where the model does not use them", async () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-bool-"));
    try {
      // GPT-2's masks as BOOL (as torch.bool buffers are saved), every other tensor F32.
      const tensors = readSafetensors(join(fixtures, "gpt2", "model.safetensors")).tensors;
      const raw = new Map<string, Raw>(
        [...tensors].map(([name, t]) => [
          name,
          { dtype: name.endsWith(".attn.bias") ? "BOOL" : "F32", shape: t.shape, values: t.data },
        ]),
      );
      mkdirSync(join(dir, "gpt2"));
      writeRaw(join(dir, "gpt2", "model.safetensors"), raw);
      cpSync(join(fixtures, "gpt2", "config.json"), join(dir, "gpt2", "config.json"));
      await expectMatches(cpu, program("GPT2", "gpt2", dir), "gpt2");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("GPT-2's attention masks in the checkpoint are left out, with a note naming them", async () => {
    const run = program("GPT2", "gpt2");
    const notes: string[] = [];
    const store = await initialize(run.program, cpu, { onNote: (n) => notes.push(n) });
    expect(notes).toHaveLength(1);
    expect(notes[0]).toContain("holds 4 tensors the model does not use, left out");
    expect(notes[0]).toContain("`transformer.h.0.attn.bias`");
    expect(store.has("param:transformer.h.0.attn.bias")).toBe(false);
  });
});

describe("std.models on WebGPU match PyTorch", () => {
  let device: WebGpuDevice;
  beforeAll(async () => {
    try {
      device = await WebGpuDevice.open();
    } catch (e) {
      throw new Error(
        `these tests need a WebGPU adapter (bash scripts/setup.sh installs lavapipe): ${(e as Error).message}`,
      );
    }
  }, 60_000);
  afterAll(() => device?.destroy());

  for (const [model, folder] of [
    ["GPT2", "gpt2"],
    ["Llama", "llama"],
    ["Qwen2", "qwen2"],
    ["Mistral", "mistral"],
  ] as const)
    it(`${model}: logits and greedy tokens`, async () => {
      const run = program(model, folder);
      await loadOnGpu(device, run);
      await expectMatches(device, run, folder);
    }, 120_000);
});

describe("broken checkpoint folders are diagnostics naming the file and the fix", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-hf-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** A copy of a fixture folder, changed by `edit`. */
  function broken(from: string, edit: (folder: string) => void): string {
    const name = `${from}-${Math.random().toString(36).slice(2, 8)}`;
    cpSync(join(fixtures, from), join(dir, name), { recursive: true });
    edit(join(dir, name));
    return name;
  }

  async function refusal(model: "GPT2" | "Llama", folder: string): Promise<CheckpointError> {
    const run = program(model, folder, dir);
    try {
      await initialize(run.program, new CpuDevice({ float64: false }));
    } catch (e) {
      if (e instanceof CheckpointError) return e;
      throw e;
    }
    throw new Error("the checkpoint was accepted");
  }

  const editJson = (path: string, edit: (v: Record<string, unknown>) => void) => {
    const value = JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
    edit(value);
    writeFileSync(path, JSON.stringify(value));
  };

  it("a tensor missing from the index and its shard is named", async () => {
    // The config says 3 layers; the checkpoint has 2.
    const folder = broken("llama-sharded", (f) =>
      editJson(join(f, "config.json"), (c) => (c["num_hidden_layers"] = 3)),
    );
    const e = await refusal("Llama", folder);
    expect(e.message).toContain("has no tensor for `model.layers.2.");
    expect(e.help).toContain("config.json");
  });

  it("a shape that disagrees with config.json names the tensor and its file", async () => {
    const folder = broken("gpt2", (f) =>
      editJson(join(f, "config.json"), (c) => (c["n_inner"] = 128)),
    );
    const e = await refusal("GPT2", folder);
    expect(e.message).toMatch(
      /`transformer\.h\.0\.mlp\.c_fc\.(weight|bias)` in `.*model\.safetensors` is \[\d+(, \d+)?\], but the model's is/,
    );
    expect(e.help).toContain("config.json");
  });

  it("an index that is not JSON, lacks weight_map, or maps outside the folder is refused", async () => {
    const index = "model.safetensors.index.json";
    const cases: [(f: string) => void, string][] = [
      [(f) => writeFileSync(join(f, index), "{ not json"), "is not valid JSON"],
      [(f) => writeFileSync(join(f, index), "{}"), "has no `weight_map` object"],
      [
        (f) =>
          editJson(join(f, index), (v) => {
            (v["weight_map"] as Record<string, string>)["lm_head.weight"] = "../model.safetensors";
          }),
        "maps `lm_head.weight` to `../model.safetensors`, which is not a file name in the folder",
      ],
      [
        (f) =>
          editJson(join(f, index), (v) => {
            const map = v["weight_map"] as Record<string, string>;
            map["model.norm.weight"] =
              map["model.norm.weight"] === "model-00001-of-00002.safetensors"
                ? "model-00002-of-00002.safetensors"
                : "model-00001-of-00002.safetensors";
          }),
        "maps `model.norm.weight` to",
      ],
      [
        (f) => rmSync(join(f, "model-00002-of-00002.safetensors")),
        "lacks `model-00002-of-00002.safetensors`",
      ],
      [
        (f) =>
          editJson(join(f, index), (v) => {
            const metadata = v["metadata"] as { total_size: number };
            metadata.total_size += 4;
          }),
        "says `metadata.total_size` is 90756 bytes, but the 21 tensors it lists hold 90752 bytes",
      ],
      [
        (f) => editJson(join(f, index), (v) => (v["metadata"] = { total_size: "90752" })),
        'has a `metadata.total_size` of "90752", not a whole number of bytes',
      ],
    ];
    for (const [edit, message] of cases) {
      const e = await refusal("Llama", broken("llama-sharded", edit));
      expect(e.message).toContain(message);
    }
  });

  it("a folder without model.safetensors or an index says what it should hold", async () => {
    const folder = broken("gpt2", (f) => rmSync(join(f, "model.safetensors")));
    const e = await refusal("GPT2", folder);
    expect(e.message).toContain(
      "is a folder without model.safetensors or model.safetensors.index.json",
    );
  });
});

describe("hf_config: a config.json read while compiling", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-hf-config-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** The diagnostics of compiling a GPT-2 program whose config.json is `config` (text). */
  function diagnosticsWith(config: string, model: "GPT2" | "Llama" | "Qwen2" | "Mistral" = "GPT2") {
    const folder = mkdtempSync(join(dir, "ckpt-"));
    writeFileSync(join(folder, "config.json"), config);
    const text = `import std.models.{${model}}
train t {
  model ${model}(hf_config("${folder}"))
  data std.data.arithmetic(ops: "-", digits: 3, negative: false)
  loss cross_entropy(model(batch.input), batch.target)
}
`;
    return prepare(new SourceFile(join(dir, "main.lrk"), text)).diagnostics.filter(
      (d) => d.severity === "error",
    );
  }

  const gpt2Config = () =>
    JSON.parse(readFileSync(join(fixtures, "gpt2", "config.json"), "utf8")) as Record<
      string,
      unknown
    >;

  it("fills in HF's defaults: a GPT-2 config without n_inner has a 4·n_embd MLP", () => {
    const config = gpt2Config();
    delete config["n_inner"];
    delete config["layer_norm_epsilon"];
    const folder = mkdtempSync(join(dir, "defaults-"));
    writeFileSync(join(folder, "config.json"), JSON.stringify(config));
    const text = `import std.models.{GPT2}
const c = hf_config("${folder}/config.json")
train t {
  model GPT2(c)
  data std.data.arithmetic(ops: "-", digits: 3, negative: false)
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
}
`;
    const { run, diagnostics } = prepare(new SourceFile(join(dir, "main.lrk"), text));
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    const fc = run!.program.params.find((p) => p.path === "transformer.h.0.mlp.c_fc.weight")!;
    expect(fc.shape.map(Number)).toEqual([32, 128]);
  });

  it("a Llama with tie_word_embeddings has no lm_head: its logits come from embed_tokens", async () => {
    const folder = mkdtempSync(join(dir, "tied-"));
    cpSync(join(fixtures, "llama"), folder, { recursive: true });
    const config = join(folder, "config.json");
    const value = JSON.parse(readFileSync(config, "utf8")) as Record<string, unknown>;
    writeFileSync(config, JSON.stringify({ ...value, tie_word_embeddings: true }));
    const run = program("Llama", folder, dir);
    const paths = run.program.params.map((p) => p.path);
    expect(paths).not.toContain("lm_head.weight");
    const notes: string[] = [];
    const store = await initialize(run.program, new CpuDevice({ float64: false }), {
      onNote: (n) => notes.push(n),
    });
    expect(notes.join("\n")).toContain("`lm_head.weight`");
    // The same as the untied model whose lm_head is a copy of the embedding.
    const cpu = new CpuDevice({ float64: false });
    const rows = reference("llama").sequences;
    const tied = await logitsOf(cpu, run, store, rows);
    const untied = program("Llama", "llama");
    const copied = await initialize(untied.program, cpu);
    copied.set("param:lm_head.weight", copied.get("param:model.embed_tokens.weight")!);
    const want = await logitsOf(cpu, untied, copied, rows);
    expect(Array.from(tied.data)).toEqual(Array.from(want.data));
  });

  it("a field the model needs and the file lacks is E0207 naming the config", () => {
    const config = gpt2Config();
    delete config["n_embd"];
    const [d] = diagnosticsWith(JSON.stringify(config));
    expect(d?.code).toBe("E0207");
    expect(d?.message).toContain("n_embd");
  });

  it("a file that is not JSON is E0502 at the call, naming the file", () => {
    const [d] = diagnosticsWith("{ oops");
    expect(d?.code).toBe("E0502");
    expect(d?.message).toMatch(/config\.json` is not valid JSON/);
    expect(d?.at?.file.path).toBe(join(dir, "main.lrk"));
  });

  it("a setting std.models does not implement is refused, not ignored", () => {
    const llama = JSON.parse(
      readFileSync(join(fixtures, "llama", "config.json"), "utf8"),
    ) as Record<string, unknown>;
    llama["rope_scaling"] = { rope_type: "yarn", factor: 2 };
    const [d] = diagnosticsWith(JSON.stringify(llama), "Llama");
    expect(d?.code).toBe("E0502");
    expect(d?.message).toContain("sets `rope_scaling` to");
    expect(d?.help).toContain("does not implement");
  });

  const configOf = (folder: string) =>
    JSON.parse(readFileSync(join(fixtures, folder, "config.json"), "utf8")) as Record<
      string,
      unknown
    >;

  it("a Qwen2 or Mistral config given to Llama is refused, naming the model to use", () => {
    const [d] = diagnosticsWith(JSON.stringify(configOf("qwen2")), "Llama");
    expect(d?.message).toContain('std.models.Llama reads a "llama" config, not "qwen2"');
    expect(d?.message).toContain("std.models.Qwen2");
    // (this program has no optimizer: that is its one error)
    const mistral = diagnosticsWith(JSON.stringify(configOf("mistral")), "Mistral");
    expect(mistral.map((d) => d.code)).toEqual(["E0305"]);
  });

  it("Qwen2's sliding window (use_sliding_window) is refused; Mistral's null window is none", () => {
    const qwen2 = { ...configOf("qwen2"), use_sliding_window: true };
    const [d] = diagnosticsWith(JSON.stringify(qwen2), "Qwen2");
    expect(d?.message).toContain("sets `use_sliding_window` to true");
    const run = (config: Record<string, unknown>) => {
      const folder = mkdtempSync(join(dir, "ckpt-"));
      writeFileSync(join(folder, "config.json"), JSON.stringify(config));
      return program("Mistral", folder, dir);
    };
    // null: no window, so the step's graph differs from the 3-token window's
    const none = run({ ...configOf("mistral"), sliding_window: null });
    const windowed = run(configOf("mistral"));
    const absent = configOf("mistral");
    delete absent["sliding_window"]; // HF's default, 4096: longer than any sequence here
    const wide = run(absent);
    expect(none.step.graph.nodes.length).toBeLessThan(windowed.step.graph.nodes.length);
    expect(wide.step.graph.nodes.length).toBe(windowed.step.graph.nodes.length);
  });
});

describe("lrkc train with a broken Hugging Face folder", () => {
  /** `lrkc train` of the Llama fixture's sharded folder after `damage`: its exit and stderr. */
  function trainWith(damage: (ckpt: string) => void) {
    const dir = mkdtempSync(join(tmpdir(), "lrk-hf-cli-"));
    try {
      cpSync(join(fixtures, "llama-sharded"), join(dir, "ckpt"), { recursive: true });
      damage(join(dir, "ckpt"));
      writeFileSync(
        join(dir, "main.lrk"),
        `import std.models.{Llama}
import std.optim.{adamw}

train t {
  model Llama(hf_config("ckpt"))
  data std.data.arithmetic(ops: "-", digits: 3, negative: false)
  init "ckpt"
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-4)
  steps 1
  batch 2
}
`,
      );
      return spawnSync(
        process.execPath,
        [lrkcBin, "train", "main.lrk", "--device", "cpu", "--out", "run"],
        { cwd: dir, encoding: "utf8", timeout: 60_000 },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it("is E0502 at the `init` line, with the fix, and exit 1", () => {
    const r = trainWith((ckpt) => rmSync(join(ckpt, "model-00002-of-00002.safetensors")));
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("main.lrk:7:8: error[E0502]");
    expect(r.stderr).toContain("lacks `model-00002-of-00002.safetensors`");
    expect(r.stderr).toContain("fetch the missing shard");
    expect(r.stderr).not.toContain("a bug in lrkc");
  });

  it("an index whose metadata.total_size disagrees with its shards is E0502 naming the index", () => {
    const r = trainWith((ckpt) => {
      const index = join(ckpt, "model.safetensors.index.json");
      const value = JSON.parse(readFileSync(index, "utf8")) as { metadata: { total_size: number } };
      value.metadata.total_size *= 2;
      writeFileSync(index, JSON.stringify(value));
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("main.lrk:7:8: error[E0502]");
    expect(r.stderr).toMatch(
      /`.*ckpt\/model\.safetensors\.index\.json` says `metadata\.total_size` is 181504 bytes, but the 21 tensors it lists hold 90752 bytes/,
    );
    expect(r.stderr).toContain("download them again together");
    expect(r.stderr).not.toContain("a bug in lrkc");
  });
});
