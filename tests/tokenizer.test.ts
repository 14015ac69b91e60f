// Hugging Face tokenizers (issue 13, item 3): runtime/tokenizer.ts against the ids that
// scripts/hf-fixtures.py computed with its own, independent encoders (GPT-2's byte-level BPE
// with its pre-tokenizing regex, and Llama's SentencePiece-BPE with byte fallback), for the
// tokenizer.json files it wrote into tests/fixtures/hf/{gpt2,llama}.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseTokenizer, readTokenizer, TokenizerError } from "../runtime/tokenizer.js";
import { root } from "./helpers.js";

const fixtures = join(root, "tests", "fixtures", "hf");
const references = (model: string) =>
  JSON.parse(readFileSync(join(fixtures, model, "tokenizer-reference.json"), "utf8")) as {
    text: string;
    ids: number[];
  }[];

describe("tokenizer.json", () => {
  for (const model of ["gpt2", "llama"]) {
    const tokenizer = readTokenizer(join(fixtures, model));
    for (const { text, ids } of references(model)) {
      it(`${model}: ${JSON.stringify(text)} encodes as the reference and decodes back`, () => {
        expect(tokenizer.encode(text)).toEqual(ids);
        // Llama's unknown characters (p, f) do not come back; everything else does.
        const back = tokenizer.decode(ids, { skipSpecial: model === "llama" });
        if (!ids.includes(0) || model === "gpt2") expect(back).toBe(text);
      });
    }
  }

  it("the vocabulary fits the fixture models, and bos/eos come from tokenizer_config.json", () => {
    const gpt2 = readTokenizer(join(fixtures, "gpt2"));
    expect(gpt2.vocabSize).toBe(64);
    expect(gpt2.eosId).toBe(0);
    const llama = readTokenizer(join(fixtures, "llama"));
    expect(llama.vocabSize).toBe(64);
    expect([llama.bosId, llama.eosId]).toEqual([1, 2]);
    expect(llama.chatTemplate).toContain("[INST]");
    expect(llama.encode("hello", { special: false })[0]).not.toBe(1);
  });

  it("a tokenizer file given directly reads the same as its folder", () => {
    const direct = readTokenizer(join(fixtures, "gpt2", "tokenizer.json"));
    expect(direct.encode("hello world")).toEqual(references("gpt2")[0]!.ids);
  });

  it("refuses what it cannot encode exactly, by name", () => {
    const json = JSON.parse(readFileSync(join(fixtures, "gpt2", "tokenizer.json"), "utf8"));
    expect(() => parseTokenizer({ ...json, model: { ...json.model, type: "WordPiece" } })).toThrow(
      /model `WordPiece` is not supported/,
    );
    expect(() => parseTokenizer({ ...json, normalizer: { type: "BertNormalizer" } })).toThrow(
      TokenizerError,
    );
    // GPT-2's fixture vocabulary has no "z" and no unknown token.
    expect(() => readTokenizer(join(fixtures, "gpt2")).encode("zoo")).toThrow(/no token for "z"/);
    expect(() => readTokenizer(join(fixtures, "nowhere"))).toThrow(/cannot find tokenizer.json/);
  });
});

describe("chat templates (a Jinja subset, rendered as apply_chat_template does)", () => {
  const base = readTokenizer(join(fixtures, "llama"));
  const withTemplate = (chatTemplate: string) => ({ ...base, chatTemplate });
  const conversation = [
    { role: "user", content: "hello" },
    { role: "assistant", content: "hi" },
  ];

  it("ChatML, with a generation prompt", async () => {
    const { renderChat } = await import("../runtime/chat-template.js");
    const chatml =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    expect(renderChat(withTemplate(chatml), conversation.slice(0, 1), true)).toBe(
      "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  it("Mistral's template: bos, loop.index0, raise_exception, eos", async () => {
    const { renderChat, TemplateError } = await import("../runtime/chat-template.js");
    const mistral =
      "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}";
    expect(renderChat(withTemplate(mistral), conversation)).toBe("<s>[INST] hello [/INST]hi</s>");
    expect(() => renderChat(withTemplate(mistral), [...conversation].reverse())).toThrow(
      TemplateError,
    );
  });

  it("trim_blocks, lstrip_blocks and `-` whitespace control", async () => {
    const { renderChat } = await import("../runtime/chat-template.js");
    const template = [
      "{% for m in messages %}",
      "  {%- if m.role == 'user' %}",
      "U: {{ m.content | trim }}",
      "  {% else %}",
      "A: {{ m.content }}",
      "  {% endif %}",
      "{% endfor %}",
      "",
    ].join("\n");
    expect(renderChat(withTemplate(template), conversation)).toBe("U: hello\nA: hi\n");
  });

  it("Llama 3's template: set, filters inside +, loop.index0, a conditional expression", async () => {
    const { renderChat } = await import("../runtime/chat-template.js");
    const llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' if add_generation_prompt else '' }}";
    expect(renderChat(withTemplate(llama3), [{ role: "user", content: " hello " }], true)).toBe(
      "<s><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    );
  });

  it("a template that fails on the data is a TemplateError, not a crash", async () => {
    const { renderChat, TemplateError } = await import("../runtime/chat-template.js");
    expect(() =>
      renderChat(withTemplate("{{ messages[0]['nothing'] | length }}"), conversation),
    ).toThrow(TemplateError);
  });

  it("refuses what it does not render, naming it", async () => {
    const { renderChat } = await import("../runtime/chat-template.js");
    expect(() =>
      renderChat(withTemplate("{{ messages[0]['content'].strip() }}"), conversation),
    ).toThrow(/uses `.strip\(\)`/);
    expect(() => renderChat(withTemplate("{% macro f() %}{% endmacro %}"), conversation)).toThrow(
      /uses \{% macro %\}/,
    );
    expect(() => renderChat(withTemplate("{{ x | tojson }}"), conversation)).toThrow(
      /uses `\| tojson`/,
    );
  });
});

describe("Llama 3's tokenizer.json layout (Split regex, then ByteLevel without its regex)", () => {
  const LLAMA3_SPLIT =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  // Every byte's character (the id of a byte is the byte), then two words and two merges; `d'`
  // would merge across "world's" if the regex did not split `'s` off.
  const vocab: Record<string, number> = {};
  const table = (() => {
    const bs: number[] = [];
    for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
    for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
    for (let b = 0xae; b <= 0xff; b++) bs.push(b);
    const cs = [...bs];
    let n = 0;
    for (let b = 0; b < 256; b++)
      if (!bs.includes(b)) {
        bs.push(b);
        cs.push(256 + n++);
      }
    return new Map(bs.map((b, i) => [b, String.fromCodePoint(cs[i]!)]));
  })();
  for (let b = 0; b < 256; b++) vocab[table.get(b)!] = b;
  Object.assign(vocab, { Ġworld: 256, Hello: 257, He: 258 });
  const json = (ignoreMerges: boolean) => ({
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: {
      type: "Sequence",
      pretokenizers: [
        { type: "Split", pattern: { Regex: LLAMA3_SPLIT }, behavior: "Isolated", invert: false },
        { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: "ByteLevel" },
    model: {
      type: "BPE",
      vocab,
      merges: [
        ["H", "e"],
        ["d", "'"],
      ],
      ignore_merges: ignoreMerges,
    },
  });

  it("splits as Llama 3's regex does and, with ignore_merges, takes whole words from the vocab", () => {
    const t = parseTokenizer(json(true));
    expect(t.encode("Hello world")).toEqual([257, 256]);
    expect(t.encode("world's 12345")).toEqual([
      ..."world".split("").map((c) => c.charCodeAt(0)),
      39,
      115, // 's (its own piece)
      32, // the space before the digits (\s+)
      49,
      50,
      51,
      52,
      53, // \p{N}{1,3}: 123, 45 (no merges between them either way)
    ]);
    expect(t.decode(t.encode("Hello world's 12345"))).toBe("Hello world's 12345");
    expect(parseTokenizer(json(false)).encode("Hello")).toEqual([258, 108, 108, 111]);
  });
});

describe("Metaspace (SentencePiece's pre-tokenizer in newer tokenizer.json files)", () => {
  const vocab: Record<string, number> = { "<s>": 0, "▁": 1, a: 2, b: 3, "▁a": 4 };
  const json = (scheme: string) => ({
    added_tokens: [{ id: 0, content: "<s>", special: true }],
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: scheme, split: true },
    decoder: { type: "Metaspace", replacement: "▁", prepend_scheme: scheme, split: true },
    model: { type: "BPE", vocab, merges: ["▁ a"] },
  });

  it('prepend_scheme "first" prefixes only the text\'s start; "always" every piece', () => {
    expect(parseTokenizer(json("first")).encode("a b<s>a")).toEqual([4, 1, 3, 0, 2]);
    expect(parseTokenizer(json("always")).encode("a b<s>a")).toEqual([4, 1, 3, 0, 4]);
    expect(parseTokenizer(json("never")).encode("a")).toEqual([2]);
    expect(parseTokenizer(json("first")).decode([4, 1, 3])).toBe("a b");
  });
});
