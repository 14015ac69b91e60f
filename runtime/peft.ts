// Adapters in Hugging Face PEFT's format (spec/language.md §17.5): `lrkc export --peft` writes
// `adapter_config.json` + `adapter_model.safetensors` as PEFT's `save_pretrained` does, and a
// PEFT folder is read back as adapter initial values (`--init-adapters`). Key names follow
// peft/utils/save_and_load.py (`get_peft_model_state_dict`): the adapter name (`default`) is
// dropped, keys are `base_model.model.<module path>.<tensor>`, LoRA's are `lora_A.weight` [r, in]
// and `lora_B.weight` [out, r] (nn.Linear submodules), DoRA's magnitude `lora_magnitude_vector`
// [out] (".weight" removed by PEFT), AdaLoRA's `lora_A` [r, in], `lora_B` [out, r], `lora_E`
// [r, 1] (ParameterDicts: no ".weight"; `ranknum` is not saved). PiSSA and OLoRA are saved as
// PEFT saves them with `path_initial_model_for_weight_conversion` (peft_model.py): a plain LoRA of
// rank 2r on the *original* weight, A' = [A; A0], B' = [B, -B0], alpha 2·alpha. Bone is BoneConfig's
// `bone_block` [r, out] (tuners/bone); RandLoRA is RandLoraConfig's `randlora_lambda` [r, N] and
// `randlora_gamma` [N, min] per layer and the shared bases `base_model.randlora_A` [r, 1, min] and
// `base_model.randlora_B` [max, N, r] (`save_projection: true`: lrk's bases come from its own
// seeded generator, not torch's, so they must travel with the adapter).
import { existsSync } from "node:fs";
import type { ParamSpec, Tensor } from "../compiler/program.js";
import { CheckpointError, readSafetensors } from "./safetensors.js";

/** An adapted module as the exporter sees it: the adapter's name and arguments. */
export interface AdaptedModule {
  /** `transformer.h.0.attn.c_attn` */
  module: string;
  /** The stdlib adapter's name: `lora`, `dora`, `adalora`, … */
  adapter: string;
  /** Its arguments, defaults applied (`rank`, `alpha`, `dropout`, `rslora`, `init_rank`, …). */
  args: Record<string, number | boolean | string>;
  /** The wrapped layer stores its weight [in, out] (GPT-2's Conv1D). */
  fanInFanOut: boolean;
}

/** What the export cannot express in PEFT's format (a diagnostic, E0506). */
export class PeftError extends Error {
  constructor(
    message: string,
    readonly help?: string,
  ) {
    super(message);
  }
}

/** The stdlib adapters PEFT also has, by PEFT's peft_type. */
const PEFT_FORMS: Record<string, "LORA" | "ADALORA" | "BONE" | "RANDLORA"> = {
  lora: "LORA",
  dora: "LORA",
  adalora: "ADALORA",
  pissa: "LORA",
  olora: "LORA",
  bone: "BONE",
  randlora: "RANDLORA",
};

const PREFIX = "base_model.model.";

/** The tensors of one adapted module under PEFT's keys, from lrk's `<module>.<adapter>.<name>`. */
const TENSOR_NAMES: Record<string, [lrk: string, peft: string][]> = {
  lora: [
    ["A", "lora_A.weight"],
    ["B", "lora_B.weight"],
  ],
  dora: [
    ["A", "lora_A.weight"],
    ["B", "lora_B.weight"],
    ["magnitude", "lora_magnitude_vector"],
  ],
  adalora: [
    ["Q", "lora_A"],
    ["P", "lora_B"],
    ["E", "lora_E"],
  ],
  bone: [["D", "bone_block"]],
  randlora: [
    ["lam", "randlora_lambda"],
    ["gamma", "randlora_gamma"],
  ],
};

export interface PeftExport {
  config: Record<string, unknown>;
  tensors: Map<string, Tensor>;
}

export interface PeftContext {
  /** Every module path of the model (to write `target_modules` as short names where exact). */
  modules: readonly string[];
  /** The base checkpoint (`base_model_name_or_path`): the `init` folder, or its `_name_or_path`. */
  baseModel: string | null;
  /** `CAUSAL_LM` for a `*ForCausalLM` / `*LMHeadModel` base, else null. */
  taskType: string | null;
  /** The run's step count (AdaLoRA's `total_step`). */
  steps: number;
  /** AdaLoRA's budget total (b_T), when a budget rule controls the adapters. */
  budgetTotal?: number;
  /**
   * The adapters' stored buffers by path (`<module>.randlora.A`), and, for PiSSA and OLoRA, their
   * parameters' initial values (`<module>.pissa.A`) computed from the same base weights.
   */
  buffers?: ReadonlyMap<string, Tensor>;
  initial?: ReadonlyMap<string, Tensor>;
}

/**
 * The PEFT config and tensors of `adapted`, whose parameters `weights` holds by path. Throws
 * PeftError when an adapter has no PEFT form, or the adapters cannot share one PEFT config.
 */
export function toPeft(
  adapted: readonly AdaptedModule[],
  weights: ReadonlyMap<string, Tensor>,
  context: PeftContext,
): PeftExport {
  if (adapted.length === 0)
    throw new PeftError("the program adapts no module: there is no adapter to export", undefined);
  const without = [...new Set(adapted.filter((a) => !PEFT_FORMS[a.adapter]).map((a) => a.adapter))];
  if (without.length > 0)
    throw new PeftError(
      `${without.map((a) => `\`${a}\``).join(", ")} ${without.length === 1 ? "has" : "have"} no PEFT form: PEFT's format holds ${Object.keys(
        PEFT_FORMS,
      )
        .map((a) => `\`${a}\``)
        .join(", ")} adapters`,
      "export the merged model instead (`--merged DIR`), which every stdlib adapter supports",
    );
  const kinds = new Set(adapted.map((a) => a.adapter));
  if (kinds.size > 1)
    throw new PeftError(
      `the program mixes ${[...kinds].map((a) => `\`${a}\``).join(" and ")} adapters, but one PEFT adapter folder holds one kind`,
      "adapt every module with the same adapter to export it for PEFT, or export it merged (`--merged DIR`)",
    );
  const kind = adapted[0]!.adapter;
  const get = (from: ReadonlyMap<string, Tensor> | undefined, path: string) => {
    const t = from?.get(path);
    if (!t)
      throw new PeftError(
        `the weights hold no \`${path}\``,
        "export a run's final.safetensors or checkpoint.safetensors written by this program",
      );
    return t;
  };
  const tensors = new Map<string, Tensor>();
  if (kind === "pissa" || kind === "olora") {
    for (const a of adapted) {
      const path = (name: string) => `${a.module}.${kind}.${name}`;
      const [A, B] = [get(weights, path("A")), get(weights, path("B"))];
      const [A0, B0] = [get(context.initial, path("A")), get(context.initial, path("B"))];
      checkResidual(
        a,
        get(weights, `${a.module}.weight`),
        A0,
        B0,
        context.buffers?.get(path("residual")),
      );
      tensors.set(`${PREFIX}${a.module}.lora_A.weight`, concatRows(A, A0, 1));
      tensors.set(`${PREFIX}${a.module}.lora_B.weight`, concatColumns(B, B0, -1));
    }
  } else if (kind === "randlora") {
    randloraTensors(adapted, weights, context, get, tensors);
  } else {
    for (const a of adapted) {
      for (const [lrk, peft] of TENSOR_NAMES[kind]!) {
        const t = get(weights, `${a.module}.${a.adapter}.${lrk}`);
        // PEFT stores AdaLoRA's E as [r, 1]
        const shaped = kind === "adalora" && lrk === "E" ? { ...t, shape: [t.shape[0]!, 1] } : t;
        tensors.set(`${PREFIX}${a.module}.${peft}`, shaped);
      }
    }
  }
  const config =
    kind === "bone"
      ? boneConfig(adapted, context)
      : kind === "randlora"
        ? randloraConfig(adapted, context)
        : peftConfig(kind, adapted, context);
  return { config, tensors };
}

/**
 * PEFT's conversion holds when the layer computed W − s·B0 A0 as its frozen residual: a base
 * weight that changed since the residual was taken (trained with weight decay, or another base)
 * would export another function, so that is a PeftError.
 */
function checkResidual(
  a: AdaptedModule,
  W: Tensor,
  A0: Tensor,
  B0: Tensor,
  residual: Tensor | undefined,
): void {
  if (!residual) return;
  const [out, r] = [B0.shape[0]!, B0.shape[1]!];
  const inn = A0.shape[1]!;
  const s = Number(a.args["alpha"]) / Number(a.args["rank"]);
  let diff = 0;
  let scale = 0;
  for (let o = 0; o < out; o++)
    for (let i = 0; i < inn; i++) {
      let ba = 0;
      for (let k = 0; k < r; k++) ba += Number(B0.data[o * r + k]) * Number(A0.data[k * inn + i]);
      const w = Number(W.data[o * inn + i]);
      diff = Math.max(diff, Math.abs(w - s * ba - Number(residual.data[o * inn + i])));
      scale = Math.max(scale, Math.abs(w));
    }
  if (diff > 1e-4 * scale)
    throw new PeftError(
      `\`${a.module}\`'s ${a.adapter} residual is not its weight minus the adapter's initial product (they differ by ${diff.toPrecision(3)}): PEFT's form, a LoRA on the original weight, would compute another layer`,
      "freeze the adapted layers' weights when training PiSSA or OLoRA, or export it merged (`--merged DIR`)",
    );
}

/** [a; b·sign]: a [r, n] over b [r', n]. */
function concatRows(a: Tensor, b: Tensor, sign: number): Tensor {
  const data = new Float32Array(a.data.length + b.data.length);
  data.set(Float32Array.from(a.data, Number));
  data.set(
    Float32Array.from(b.data, (v) => sign * Number(v)),
    a.data.length,
  );
  return { shape: [a.shape[0]! + b.shape[0]!, a.shape[1]!], data };
}

/** [a, b·sign]: a [m, r] beside b [m, r']. */
function concatColumns(a: Tensor, b: Tensor, sign: number): Tensor {
  const [m, r] = [a.shape[0]!, a.shape[1]!];
  const r2 = b.shape[1]!;
  const data = new Float32Array(m * (r + r2));
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < r; j++) data[i * (r + r2) + j] = Number(a.data[i * r + j]);
    for (let j = 0; j < r2; j++) data[i * (r + r2) + r + j] = sign * Number(b.data[i * r2 + j]);
  }
  return { shape: [m, r + r2], data };
}

/** One value every adapted module shares, or PeftError naming the PEFT field that holds one. */
function shared(
  adapted: readonly AdaptedModule[],
  arg: string,
  field: string,
  fallback: number | boolean | string,
): number | boolean | string {
  const values = new Set(adapted.map((a) => a.args[arg] ?? fallback));
  if (values.size > 1)
    throw new PeftError(
      `the adapters have different \`${arg}\`s, but PEFT's ${adapted[0]!.adapter === "bone" ? "BoneConfig" : "RandLoraConfig"} holds one \`${field}\` (no rank or alpha pattern)`,
      `give every adapted module the same \`${arg}\`, or export it merged (\`--merged DIR\`)`,
    );
  return [...values][0]!;
}

/** The fields every PEFT config has, as PeftConfig writes them. */
function commonFields(
  kind: string,
  adapted: readonly AdaptedModule[],
  context: PeftContext,
): Record<string, unknown> {
  return {
    peft_type: PEFT_FORMS[kind],
    task_type: context.taskType,
    base_model_name_or_path: context.baseModel,
    revision: null,
    inference_mode: true,
    target_modules: targetModules(adapted, context.modules),
  };
}

/** BoneConfig's fields (peft/tuners/bone/config.py): `init_weights: true` is Bone's own update. */
function boneConfig(
  adapted: readonly AdaptedModule[],
  context: PeftContext,
): Record<string, unknown> {
  return {
    ...commonFields("bone", adapted, context),
    r: shared(adapted, "rank", "r", 64),
    exclude_modules: null,
    init_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    bias: "none",
    modules_to_save: null,
  };
}

/** RandLoraConfig's fields (peft/tuners/randlora/config.py). */
function randloraConfig(
  adapted: readonly AdaptedModule[],
  context: PeftContext,
): Record<string, unknown> {
  const rank = shared(adapted, "rank", "r", 32);
  return {
    ...commonFields("randlora", adapted, context),
    r: rank,
    // lrk's seed, for the record: PEFT regenerates bases from it with torch's generator only
    // when they are not saved, and they are
    projection_prng_key: shared(adapted, "seed", "projection_prng_key", 0),
    save_projection: true,
    sparse: false,
    very_sparse: false,
    randlora_dropout: shared(adapted, "dropout", "randlora_dropout", 0),
    fan_in_fan_out: adapted.some((a) => a.fanInFanOut),
    randlora_alpha: shared(adapted, "alpha", "randlora_alpha", 20 * Number(rank)),
    bias: "none",
    modules_to_save: null,
    init_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
  };
}

/**
 * RandLoRA's per-layer λᵀ [r, N] and γ [N, min], and PEFT's one pair of bases shared by every
 * layer: randlora_A [r, 1, minG], randlora_B [maxG, NG, r] for the largest (out, in) among the
 * adapted layers (RandLoraModel._find_dim), each layer using A[:, :, :min], B[:max, :N, :].
 * PEFT pairs row i·N + k of (λ A γ) with column m of B[:max, :N, :] flattened (m = k'·r + j), so
 * lrk's B column k·r + i goes to flat column i·N + k. Layers whose lrk bases would need different
 * values in the shared ones (other shapes drawing other numbers) are E0506.
 */
function randloraTensors(
  adapted: readonly AdaptedModule[],
  weights: ReadonlyMap<string, Tensor>,
  context: PeftContext,
  get: (from: ReadonlyMap<string, Tensor> | undefined, path: string) => Tensor,
  tensors: Map<string, Tensor>,
): void {
  const r = Number(shared(adapted, "rank", "r", 32));
  const layers = adapted.map((a) => {
    const lam = get(weights, `${a.module}.randlora.lam`); // [N, r]
    const gamma = get(weights, `${a.module}.randlora.gamma`); // [N, min]
    const A = get(context.buffers, `${a.module}.randlora.A`); // [r, min]
    const B = get(context.buffers, `${a.module}.randlora.B`); // [max, N·r]
    return { a, lam, gamma, A, B, N: lam.shape[0]!, min: A.shape[1]!, max: B.shape[0]! };
  });
  // PEFT sizes the bases by the largest (out, in), taken per side over the layers
  const sides = adapted.map((a) => {
    const w = get(weights, `${a.module}.weight`).shape; // Linear [out, in], Conv1D [in, out]
    return a.fanInFanOut ? { out: w[1]!, in: w[0]! } : { out: w[0]!, in: w[1]! };
  });
  const [outG, inG] = [Math.max(...sides.map((s) => s.out)), Math.max(...sides.map((s) => s.in))];
  const minG = Math.min(outG, inG);
  const maxG = Math.max(outG, inG);
  const NG = Math.ceil(minG / r);
  const A3 = new Float32Array(r * minG);
  const B3 = new Float32Array(maxG * NG * r);
  const setA = new Uint8Array(A3.length);
  const setB = new Uint8Array(B3.length);
  const put = (to: Float32Array, filled: Uint8Array, at: number, v: number, module: string) => {
    if (filled[at] && to[at] !== v)
      throw new PeftError(
        `PEFT's RandLoRA shares one pair of random bases among all adapted layers, but lrk's \`${module}\` drew other bases than the layers before it (layers of other shapes draw their own numbers from the seed)`,
        "adapt layers of one shape (or export it merged, `--merged DIR`)",
      );
    to[at] = v;
    filled[at] = 1;
  };
  for (const l of layers) {
    for (let i = 0; i < r; i++)
      for (let c = 0; c < l.min; c++)
        put(A3, setA, i * minG + c, Number(l.A.data[i * l.min + c]), l.a.module);
    for (let k = 0; k < l.N; k++)
      for (let i = 0; i < r; i++) {
        const m = i * l.N + k;
        const [kk, j] = [Math.floor(m / r), m % r];
        for (let row = 0; row < l.max; row++)
          put(
            B3,
            setB,
            (row * NG + kk) * r + j,
            Number(l.B.data[row * l.N * r + k * r + i]),
            l.a.module,
          );
      }
    const lamT = new Float32Array(r * l.N);
    for (let k = 0; k < l.N; k++)
      for (let i = 0; i < r; i++) lamT[i * l.N + k] = Number(l.lam.data[k * r + i]);
    tensors.set(`${PREFIX}${l.a.module}.randlora_lambda`, { shape: [r, l.N], data: lamT });
    tensors.set(`${PREFIX}${l.a.module}.randlora_gamma`, l.gamma);
  }
  tensors.set("base_model.randlora_A", { shape: [r, 1, minG], data: A3 });
  tensors.set("base_model.randlora_B", { shape: [maxG, NG, r], data: B3 });
}

/** `adapter_config.json`: LoraConfig's (or AdaLoraConfig's) fields, as PEFT writes them. */
function peftConfig(
  kind: string,
  adapted: readonly AdaptedModule[],
  context: PeftContext,
): Record<string, unknown> {
  const rankArg = kind === "adalora" ? "init_rank" : "rank";
  // PiSSA and OLoRA's conversion to LoRA doubles the rank and alpha (the scale stays alpha / rank)
  const factor = kind === "pissa" || kind === "olora" ? 2 : 1;
  const rank = (a: AdaptedModule) => factor * Number(a.args[rankArg]);
  const alpha = (a: AdaptedModule) => factor * Number(a.args["alpha"]);
  const dropout = (a: AdaptedModule) => Number(a.args["dropout"] ?? 0);
  const first = adapted[0]!;
  const dropouts = new Set(adapted.map(dropout));
  if (dropouts.size > 1)
    throw new PeftError(
      "the adapters have different dropouts, but PEFT's config holds one `lora_dropout`",
      "give every adapted module the same dropout",
    );
  const rslora = new Set(adapted.map((a) => a.args["rslora"] === true));
  if (rslora.size > 1)
    throw new PeftError(
      "some adapters use rslora and some do not, but PEFT's config holds one `use_rslora`",
      "give every adapted module the same `rslora`",
    );
  // modules whose rank or alpha differ from the first's are listed by full path (PEFT matches
  // pattern keys against the end of a module's name)
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  for (const a of adapted) {
    if (rank(a) !== rank(first)) rankPattern[a.module] = rank(a);
    if (alpha(a) !== alpha(first)) alphaPattern[a.module] = alpha(a);
  }
  const common = {
    ...commonFields(kind, adapted, context),
    r: kind === "adalora" ? 8 : rank(first),
    lora_alpha: alpha(first),
    lora_dropout: dropout(first),
    // PEFT sets it for Conv1D layers itself, with a warning when the config says otherwise
    fan_in_fan_out: adapted.some((a) => a.fanInFanOut),
    bias: "none",
    use_rslora: rslora.has(true),
    modules_to_save: null,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: kind === "adalora" ? null : rankPattern,
    alpha_pattern: alphaPattern,
    use_dora: kind === "dora",
  };
  if (kind !== "adalora") return common;
  if (Object.keys(rankPattern).length > 0)
    throw new PeftError(
      "the AdaLoRA adapters have different `init_rank`s, but PEFT's AdaLoRA config holds one `init_r`",
      "give every adapted module the same `init_rank`",
    );
  return {
    ...common,
    // The exported tensors keep every rank (pruned ones have E = 0), so no rank_pattern: PEFT
    // would resize the layers and divide by the smaller rank, which lrk (and PEFT while training)
    // does not.
    target_r: context.budgetTotal ? Math.round(context.budgetTotal / adapted.length) : rank(first),
    init_r: rank(first),
    tinit: 0,
    tfinal: 0,
    deltaT: 1,
    beta1: 0.85,
    beta2: 0.85,
    orth_reg_weight: Number(first.args["orth_reg"] ?? 0.5),
    total_step: context.steps,
  };
}

/**
 * PEFT's `target_modules`: the modules' last names (`["c_attn"]`) when those select exactly the
 * adapted modules among all of the model's, else their full paths (PEFT's list entries match a
 * module whose name is the entry or ends with `.` + the entry).
 */
function targetModules(adapted: readonly AdaptedModule[], modules: readonly string[]): string[] {
  const adaptedSet = new Set(adapted.map((a) => a.module));
  const last = (p: string) => p.slice(p.lastIndexOf(".") + 1);
  const names = [...new Set(adapted.map((a) => last(a.module)))].sort();
  const selected = modules.filter((m) => names.includes(last(m)));
  const exact = selected.length === adaptedSet.size && selected.every((m) => adaptedSet.has(m));
  return exact ? names : [...adaptedSet].sort();
}

/**
 * A PEFT adapter folder's tensors as this program's adapter parameters (`param:<module>.<adapter>
 * .<name>`), checked against the program: every adapter parameter of the program must be there,
 * with its shape. The config's kind must be the program's.
 */
export function readPeftFolder(
  dir: string,
  params: readonly ParamSpec[],
  readConfig: (path: string) => Record<string, unknown>,
): { tensors: Map<string, Tensor>; config: Record<string, unknown> } {
  const config = readConfig(`${dir}/adapter_config.json`);
  const type = config["peft_type"];
  const kind =
    type === "ADALORA"
      ? "adalora"
      : type === "LORA"
        ? config["use_dora"] === true
          ? "dora"
          : "lora"
        : (type === "BONE" || type === "MISS") && (config["init_weights"] ?? true) === true
          ? "bone"
          : type === "RANDLORA" && !config["sparse"] && !config["very_sparse"]
            ? "randlora"
            : undefined;
  if (!kind)
    throw new CheckpointError(
      `${dir}/adapter_config.json is a PEFT \`${String(type)}\` adapter${["BONE", "MISS", "RANDLORA"].includes(String(type)) ? ` of a variant lrk does not have (Bone's or MiSS's \`init_weights\` "bat" or "mini", RandLoRA's sparse bases)` : ""}; lrk reads LORA (with or without DoRA), ADALORA, BONE (and MiSS's default, its successor) and RANDLORA`,
      "load an adapter of a kind lrk has",
    );
  if (kind === "randlora" && config["save_projection"] === false)
    throw new CheckpointError(
      `${dir} holds a RandLoRA adapter without its random bases (\`save_projection: false\`): PEFT regenerates them with torch's generator, which lrk does not have`,
      "save the adapter from PEFT with `save_projection=True`",
    );
  checkAdapterOnly(dir, config);
  const file = readSafetensors(`${dir}/adapter_model.safetensors`).tensors;
  // PEFT 0.17 renamed Bone MiSS: the same block under `miss_block`
  const names = type === "MISS" ? [["D", "miss_block"] as const] : TENSOR_NAMES[kind]!;
  const byKey = new Map(names.map(([lrk, peft]) => [lrk, peft]));
  const tensors = new Map<string, Tensor>();
  const adapterParams = params.filter((p) => p.origin === "adapter");
  const mine = adapterParams.filter((p) => p.path.split(".").at(-2) === kind);
  if (mine.length === 0)
    throw new CheckpointError(
      `${dir} holds ${kind} adapters, but the program has no \`${kind}\` adapter`,
      `adapt the modules with \`${kind}(…)\` as the adapter was trained`,
    );
  const used = new Set<string>();
  for (const p of mine) {
    const parts = p.path.split(".");
    const name = parts.at(-1)!;
    const module = parts.slice(0, -2).join(".");
    const key = `${PREFIX}${module}.${byKey.get(name)}`;
    const t = file.get(key);
    if (!t)
      throw new CheckpointError(
        `${dir}/adapter_model.safetensors has no \`${key}\` (for \`${p.path}\`)`,
        "the adapter was trained on other modules: adapt the modules its target_modules names",
      );
    const count = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
    // PEFT's RandLoRA λ is λᵀ [r, N] (put back in lrk's order below)
    const want = kind === "randlora" && name === "lam" ? [p.shape[1]!, p.shape[0]!] : p.shape;
    if (count(t.shape) !== count(want) || t.shape[0] !== want[0])
      throw new CheckpointError(
        `\`${key}\` is [${t.shape.join(", ")}] in ${dir}, but \`${p.path}\` is [${p.shape.join(", ")}]`,
        "give the adapter the rank it was trained with (adapter_config.json's `r`)",
      );
    tensors.set(`param:${p.path}`, { ...t, shape: [...p.shape] });
    used.add(key);
  }
  if (kind === "randlora") {
    const layers = mine.filter((p) => p.path.endsWith(".lam"));
    for (const p of layers) {
      const module = p.path.slice(0, -".randlora.lam".length);
      const lamT = file.get(`${PREFIX}${module}.randlora_lambda`)!; // [r, N]
      const [N, r] = [p.shape[0]!, p.shape[1]!];
      const lam = new Float32Array(N * r);
      for (let k = 0; k < N; k++)
        for (let i = 0; i < r; i++) lam[k * r + i] = Number(lamT.data[i * N + k]);
      tensors.set(`param:${p.path}`, { shape: [N, r], data: lam });
      const min = params.find((q) => q.path === `${module}.randlora.gamma`)!.shape[1]!;
      const weight = params.find((q) => q.path === `${module}.weight`)?.shape ?? [min, min];
      const max = Math.max(...weight);
      Object.entries(randloraBases(dir, file, module, { r, N, min, max })).forEach(([n, t]) =>
        tensors.set(`buffer:${module}.randlora.${n}`, t),
      );
    }
    used.add("base_model.randlora_A").add("base_model.randlora_B");
  }
  // a module the adapter was trained on that the program does not adapt would be dropped
  const unused = [...file.keys()].filter((k) => !used.has(k));
  if (unused.length > 0)
    throw new CheckpointError(
      `${dir} also adapts modules this program does not: \`${unused[0]}\`${unused.length > 1 ? ` and ${unused.length - 1} more tensors` : ""}`,
      "adapt every module the adapter's target_modules names",
    );
  return { tensors, config };
}

/** How to turn a PEFT folder lrk cannot read as adapters into a base checkpoint it can. */
const MERGE_HELP =
  "merge it into its base model with PEFT (`PeftModel.from_pretrained(base, dir).merge_and_unload().save_pretrained(out, safe_serialization=True)`) and `init` from that folder";

/**
 * A PEFT folder whose tensors are adapters only, as safetensors: with `bias` other than "none"
 * PEFT also trained (and saved) the base model's biases, and `modules_to_save` saves whole
 * trained modules (a classifier head); lrk's adapters hold neither, and leaving them out would
 * give another model in silence. An adapter_model.bin is a pickle, which lrk never reads.
 */
function checkAdapterOnly(dir: string, config: Record<string, unknown>): void {
  const bias = config["bias"] ?? "none";
  if (bias !== "none")
    throw new CheckpointError(
      `${dir}/adapter_config.json has \`bias: ${JSON.stringify(bias)}\`: the adapter trained the base model's biases too, which lrk's adapters do not hold`,
      MERGE_HELP,
    );
  const saved = config["modules_to_save"];
  if (Array.isArray(saved) ? saved.length > 0 : saved !== null && saved !== undefined)
    throw new CheckpointError(
      `${dir}/adapter_config.json has \`modules_to_save: ${JSON.stringify(saved)}\`: the adapter saves whole trained modules besides its adapters, which lrk does not read into a base model`,
      MERGE_HELP,
    );
  if (!existsSync(`${dir}/adapter_model.safetensors`) && existsSync(`${dir}/adapter_model.bin`))
    throw new CheckpointError(
      `${dir} holds adapter_model.bin, a pickle, which lrk does not read (loading one can run code)`,
      "save the adapter again from PEFT as safetensors: `PeftModel.from_pretrained(base, dir).save_pretrained(out, safe_serialization=True)`",
    );
}

/**
 * One layer's RandLoRA bases in lrk's layout (A [r, min], B [max, N·r]) from PEFT's shared ones
 * (the inverse of the export's mapping, `randloraTensors`).
 */
function randloraBases(
  dir: string,
  file: ReadonlyMap<string, Tensor>,
  module: string,
  { r, N, min, max }: { r: number; N: number; min: number; max: number },
): { A: Tensor; B: Tensor } {
  const A3 = file.get("base_model.randlora_A");
  const B3 = file.get("base_model.randlora_B");
  const [, , minG] = A3?.shape ?? [];
  const [maxG, NG] = B3?.shape ?? [];
  if (
    !A3 ||
    !B3 ||
    A3.shape.length !== 3 ||
    B3.shape.length !== 3 ||
    A3.shape[0] !== r ||
    B3.shape[2] !== r ||
    minG! < min ||
    maxG! < max ||
    NG! < N
  )
    throw new CheckpointError(
      `${dir}/adapter_model.safetensors has no RandLoRA bases \`base_model.randlora_A\` [${r}, 1, ≥${min}] and \`base_model.randlora_B\` [≥${max}, ≥${N}, ${r}] for \`${module}\``,
      "save the adapter from PEFT with `save_projection=True`, for the rank the program gives",
    );
  const A = new Float32Array(r * min);
  for (let i = 0; i < r; i++)
    for (let c = 0; c < min; c++) A[i * min + c] = Number(A3.data[i * minG! + c]);
  const B = new Float32Array(max * N * r);
  for (let k = 0; k < N; k++)
    for (let i = 0; i < r; i++) {
      const m = i * N + k;
      const [kk, j] = [Math.floor(m / r), m % r];
      for (let row = 0; row < max; row++)
        B[row * N * r + k * r + i] = Number(B3.data[(row * NG! + kk) * r + j]);
    }
  return { A: { shape: [r, min], data: A }, B: { shape: [max, N * r], data: B } };
}
