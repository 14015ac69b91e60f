// Adapters in Hugging Face PEFT's format (spec/language.md §17.5): `lrkc export --peft` writes
// `adapter_config.json` + `adapter_model.safetensors` as PEFT's `save_pretrained` does, and a
// PEFT folder is read back as adapter initial values (`--init-adapters`). Key names follow
// peft/utils/save_and_load.py (`get_peft_model_state_dict`): the adapter name (`default`) is
// dropped, keys are `base_model.model.<module path>.<tensor>`, LoRA's are `lora_A.weight` [r, in]
// and `lora_B.weight` [out, r] (nn.Linear submodules), DoRA's magnitude `lora_magnitude_vector`
// [out] (".weight" removed by PEFT), AdaLoRA's `lora_A` [r, in], `lora_B` [out, r], `lora_E`
// [r, 1] (ParameterDicts: no ".weight"; `ranknum` is not saved).
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
const PEFT_FORMS: Record<string, "LORA" | "ADALORA"> = {
  lora: "LORA",
  dora: "LORA",
  adalora: "ADALORA",
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
  const tensors = new Map<string, Tensor>();
  for (const a of adapted) {
    for (const [lrk, peft] of TENSOR_NAMES[kind]!) {
      const path = `${a.module}.${a.adapter}.${lrk}`;
      const t = weights.get(path);
      if (!t)
        throw new PeftError(
          `the weights hold no \`${path}\``,
          "export a run's final.safetensors or checkpoint.safetensors written by this program",
        );
      // PEFT stores AdaLoRA's E as [r, 1]
      const shaped = kind === "adalora" && lrk === "E" ? { ...t, shape: [t.shape[0]!, 1] } : t;
      tensors.set(`${PREFIX}${a.module}.${peft}`, shaped);
    }
  }
  return { config: peftConfig(kind, adapted, context), tensors };
}

/** `adapter_config.json`: LoraConfig's (or AdaLoraConfig's) fields, as PEFT writes them. */
function peftConfig(
  kind: string,
  adapted: readonly AdaptedModule[],
  context: PeftContext,
): Record<string, unknown> {
  const rankArg = kind === "adalora" ? "init_rank" : "rank";
  const rank = (a: AdaptedModule) => Number(a.args[rankArg]);
  const alpha = (a: AdaptedModule) => Number(a.args["alpha"]);
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
    peft_type: PEFT_FORMS[kind],
    task_type: context.taskType,
    base_model_name_or_path: context.baseModel,
    revision: null,
    inference_mode: true,
    r: kind === "adalora" ? 8 : rank(first),
    target_modules: targetModules(adapted, context.modules),
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
  const kind =
    config["peft_type"] === "ADALORA"
      ? "adalora"
      : config["peft_type"] === "LORA"
        ? config["use_dora"] === true
          ? "dora"
          : "lora"
        : undefined;
  if (!kind)
    throw new CheckpointError(
      `${dir}/adapter_config.json is a PEFT \`${String(config["peft_type"])}\` adapter; lrk reads LORA (with or without DoRA) and ADALORA`,
      "load an adapter of a kind lrk has",
    );
  const file = readSafetensors(`${dir}/adapter_model.safetensors`).tensors;
  const byKey = new Map(TENSOR_NAMES[kind]!.map(([lrk, peft]) => [lrk, peft]));
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
    if (count(t.shape) !== count(p.shape) || t.shape[0] !== p.shape[0])
      throw new CheckpointError(
        `\`${key}\` is [${t.shape.join(", ")}] in ${dir}, but \`${p.path}\` is [${p.shape.join(", ")}]`,
        "give the adapter the rank it was trained with (adapter_config.json's `r`)",
      );
    tensors.set(`param:${p.path}`, { ...t, shape: [...p.shape] });
    used.add(key);
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
