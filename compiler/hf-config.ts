// `hf_config(path)`: a Hugging Face `config.json` read while compiling, as a struct whose fields
// are the file's (`config.n_embd`, `config.num_key_value_heads`). std.models' GPT2 and Llama take
// one. Fields HF fills in when a file leaves them out (or sets them to null) are filled in here
// with HF's defaults for the file's `model_type`, so the models read every field they use; the
// features those models do not implement are refused here, naming the field, rather than trained
// wrong in silence.
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { dirname, join, resolve as resolvePath } from "node:path";
import { error, type Location } from "../language/diagnostics.js";
import type { Diagnostic } from "../language/diagnostics.js";
import type { Value } from "./values.js";

/** No config.json is this large; a bigger file is a wrong path (a checkpoint, a data set). */
const MAX_CONFIG_BYTES = 1 << 20;

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/**
 * HF's defaults (configuration_gpt2.py, configuration_llama.py, configuration_mistral.py,
 * configuration_qwen2.py) for fields a file may omit.
 */
function defaults(config: Record<string, Json>): Record<string, Json> {
  switch (config["model_type"]) {
    case "gpt2": {
      const d = config["n_embd"];
      return {
        n_inner: typeof d === "number" ? 4 * d : null,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new",
        n_positions: 1024,
        tie_word_embeddings: true,
        scale_attn_weights: true,
        scale_attn_by_inverse_layer_idx: false,
        reorder_and_upcast_attn: false,
        resid_pdrop: 0.1,
        embd_pdrop: 0.1,
        attn_pdrop: 0.1,
      };
    }
    case "llama":
    case "mistral":
    case "qwen2": {
      const type = config["model_type"];
      const hidden = config["hidden_size"];
      const heads = config["num_attention_heads"];
      return {
        num_key_value_heads: heads ?? null,
        head_dim:
          typeof hidden === "number" && typeof heads === "number" && heads > 0
            ? Math.floor(hidden / heads)
            : null,
        rms_norm_eps: 1e-6,
        rope_theta: 10000,
        hidden_act: "silu",
        tie_word_embeddings: false,
        // Llama's switches; Qwen2 always has biases on q, k, v (not o), Mistral none
        attention_bias: false,
        mlp_bias: false,
        ...(type === "mistral" ? { sliding_window: 4096 } : {}),
        ...(type === "qwen2" ? { use_sliding_window: false, sliding_window: 4096 } : {}),
        attention_dropout: 0,
      };
    }
    default:
      return {};
  }
}

/** Settings std.models does not implement, with the value that is supported. */
const unsupported: Record<string, Record<string, Json>> = {
  gpt2: {
    scale_attn_weights: true,
    scale_attn_by_inverse_layer_idx: false,
    reorder_and_upcast_attn: false,
  },
  // Qwen2's sliding window applies only with use_sliding_window, to layers past max_window_layers
  qwen2: { use_sliding_window: false },
};

/** The `rope_scaling` kinds std.nn.Rotary implements (`"default"`: none). */
const ROPE_TYPES = ["default", "linear", "llama3"];

/**
 * `rope_scaling` as the models read it: `{"rope_type": "default"}` for none (null or absent),
 * `rope_type` from the older `type` key (as transformers' rope_config_validation does), and
 * neutral values for the fields its kind does not use. Undefined for a kind Rotary does not
 * implement.
 */
function ropeScaling(value: Json | undefined, positions: Json | undefined): Json | undefined {
  // inert where a kind does not use them, so that a model can read every field
  const inert = {
    factor: 1,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: positions ?? 8192,
  };
  if (value === null || value === undefined) return { ...inert, rope_type: "default" };
  if (typeof value !== "object" || Array.isArray(value)) return undefined;
  const type = value["rope_type"] ?? value["type"];
  if (typeof type !== "string" || !ROPE_TYPES.includes(type)) return undefined;
  const given = Object.fromEntries(Object.entries(value).filter(([, v]) => v !== null));
  // llama3 must give its four fields, linear its factor (HF's validation): reading a missing
  // one is E0207 naming the config
  const unused =
    type === "llama3" ? {} : type === "linear" ? { ...inert, factor: undefined } : inert;
  const filled = Object.fromEntries(Object.entries(unused).filter(([, v]) => v !== undefined));
  return { ...filled, ...given, rope_type: type } as Json;
}

/**
 * Fields where an explicit `null` means something other than "HF's default": Mistral's
 * `"sliding_window": null` turns the window off (absent, the default 4096 applies). Read as 0.
 */
const nullMeans: Record<string, Record<string, Json>> = {
  mistral: { sliding_window: 0 },
  qwen2: { sliding_window: 0 },
};

/**
 * Fields whose default, when the file leaves them out, is not what an explicit `null` means:
 * MistralConfig's `num_key_value_heads` is 8 and Qwen2Config's 32 when absent, while `null` is
 * multi-head attention (their `__post_init__`), as Llama's absent or null is.
 */
const absentMeans: Record<string, Record<string, Json>> = {
  mistral: { num_key_value_heads: 8 },
  qwen2: { num_key_value_heads: 32 },
};

/**
 * transformers 5 saves a config's rotary settings as one `rope_parameters` object (`rope_theta`,
 * `rope_type` and the scaling's fields) in place of `rope_theta` and `rope_scaling`; read as its
 * RotaryEmbeddingConfigMixin does: `rope_scaling`, where given, is the scaling, else
 * `rope_parameters`; the theta is `rope_parameters.rope_theta`, else the top-level `rope_theta`.
 * Sets `filled`'s `rope_theta` and `rope_scaling` from it; a message for per-layer parameters
 * (a dict of dicts, as models with several attention kinds save), which std.models has no use for.
 */
function ropeParameters(filled: Record<string, Json>): string | undefined {
  const params = filled["rope_parameters"];
  if (params === undefined || params === null) return undefined;
  if (typeof params !== "object" || Array.isArray(params))
    return `\`rope_parameters\` is ${JSON.stringify(params)}, not an object`;
  if (Object.values(params).some((v) => typeof v === "object" && v !== null))
    return `\`rope_parameters\` holds parameters for each kind of layer (${Object.keys(params).join(", ")}); std.models' attention has one kind`;
  if (typeof params["rope_theta"] === "number") filled["rope_theta"] = params["rope_theta"];
  if (filled["rope_scaling"] === undefined || filled["rope_scaling"] === null)
    filled["rope_scaling"] = params;
  return undefined;
}

/**
 * The config at `path` (a config.json, or a folder holding one), relative to the file `from`.
 * Problems are E0502 at `at`: the file belongs to a checkpoint that cannot be used.
 */
export function readHfConfig(
  path: string,
  from: string,
  at: Location,
): { value: Value } | { diagnostic: Diagnostic } {
  const fail = (message: string, help?: string) => ({
    diagnostic: error("E0502", message, at, help ? { help } : {}),
  });
  const resolved = resolvePath(dirname(from), path);
  let file = resolved;
  // How messages name the file: as the program does, with `config.json` added for a folder.
  const shown = () => (file === resolved ? path : join(path, "config.json"));
  let text: string;
  try {
    text = readSmallFile(file, () => (file = join(file, "config.json")));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT")
      return fail(
        `cannot read \`${shown()}\`: no such file`,
        "pass a Hugging Face checkpoint folder, or its config.json, relative to this file",
      );
    return fail(`cannot read \`${shown()}\`: ${(e as Error).message}`);
  }
  let parsed: Json;
  try {
    parsed = JSON.parse(text) as Json;
  } catch (e) {
    return fail(
      `\`${shown()}\` is not valid JSON: ${(e as Error).message}`,
      "a Hugging Face config.json is one JSON object",
    );
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    return fail(
      `\`${shown()}\` holds ${Array.isArray(parsed) ? "a list" : "no object"}, not a config`,
    );
  const filled: Record<string, Json> = { ...parsed };
  const type = typeof parsed["model_type"] === "string" ? parsed["model_type"] : "";
  for (const [key, value] of Object.entries(nullMeans[type] ?? {}))
    if (filled[key] === null) filled[key] = value;
  for (const [key, value] of Object.entries(absentMeans[type] ?? {}))
    if (filled[key] === undefined) filled[key] = value;
  const rope = ropeParameters(filled);
  if (typeof rope === "string")
    return fail(
      `\`${shown()}\`: ${rope}`,
      "this checkpoint needs a feature lrk does not implement yet",
    );
  for (const [key, value] of Object.entries(defaults(parsed)))
    if (filled[key] === undefined || filled[key] === null) filled[key] = value;
  if (["llama", "mistral", "qwen2"].includes(type)) {
    const scaling = ropeScaling(filled["rope_scaling"], filled["max_position_embeddings"]);
    if (scaling === undefined)
      return fail(
        `\`${shown()}\` sets \`rope_scaling\` to ${JSON.stringify(filled["rope_scaling"])}; std.models implements rope_type ${ROPE_TYPES.map((t) => `"${t}"`).join(", ")}`,
        "this checkpoint needs a feature lrk does not implement yet",
      );
    filled["rope_scaling"] = scaling;
  }
  for (const [key, supported] of Object.entries(unsupported[type] ?? {})) {
    const value = filled[key] ?? null;
    if (JSON.stringify(value) !== JSON.stringify(supported))
      return fail(
        `\`${shown()}\` sets \`${key}\` to ${JSON.stringify(value)}; std.models supports only ${JSON.stringify(supported)}`,
        "this checkpoint needs a feature lrk does not implement yet",
      );
  }
  return { value: toValue(filled, `the config \`${path}\``) };
}

/** A JSON value as a compile-time value; nulls are left out (reading one is E0207). */
function toValue(json: Json, what: string): Value {
  if (typeof json === "number")
    return { kind: "number", value: json, integer: Number.isInteger(json) };
  if (typeof json === "boolean") return { kind: "bool", value: json };
  if (typeof json === "string") return { kind: "string", value: json };
  if (Array.isArray(json))
    return { kind: "list", items: json.filter((x) => x !== null).map((x) => toValue(x, what)) };
  const fields = new Map<string, Value>();
  for (const [key, value] of Object.entries(json ?? {}))
    if (value !== null) fields.set(key, toValue(value, `${what}'s \`${key}\``));
  return { kind: "struct", what, fields };
}

/** A regular file of at most MAX_CONFIG_BYTES; `intoFolder` gives the path to read in a folder. */
function readSmallFile(path: string, intoFolder: () => string): string {
  let fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    let stat = fstatSync(fd);
    if (stat.isDirectory()) {
      closeSync(fd);
      fd = openSync(intoFolder(), constants.O_RDONLY | constants.O_NONBLOCK);
      stat = fstatSync(fd);
    }
    if (!stat.isFile()) throw new Error("not a regular file");
    if (stat.size > MAX_CONFIG_BYTES)
      throw new Error(`it is ${stat.size} bytes, too large for a config.json`);
    const bytes = Buffer.alloc(stat.size);
    let done = 0;
    while (done < bytes.length) {
      const n = readSync(fd, bytes, done, bytes.length - done, done);
      if (n === 0) break;
      done += n;
    }
    return bytes.subarray(0, done).toString("utf8");
  } finally {
    closeSync(fd);
  }
}
