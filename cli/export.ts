// `lrkc export RUN_OR_WEIGHTS --peft DIR | --merged DIR`: a trained run's adapters for the rest
// of the ecosystem. `--peft` writes a Hugging Face PEFT adapter folder (runtime/peft.ts; LoRA,
// DoRA, AdaLoRA, PiSSA and OLoRA as LoRA, Bone, RandLoRA), `--merged` a Hugging Face checkpoint folder of the model with every adapter
// merged into its layer (each adapter's `merged` member, compiler/merge.ts). The program and train
// block are the ones the run recorded (run.json, or the weights file's metadata) unless given.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { compile, type Compiled } from "../compiler/compile.js";
import { compileMerge } from "../compiler/merge.js";
import type { Tensor } from "../compiler/program.js";
import type { Value } from "../compiler/values.js";
import { error, type Diagnostic } from "../language/diagnostics.js";
import { isFileSystemError, makeFolder, writeFileAtomic } from "../runtime/atomic.js";
import { checkpointUses, loadCheckpoint, type LoadedCheckpoint } from "../runtime/checkpoint.js";
import { CpuDevice } from "../runtime/device.js";
import { PeftError, readPeftFolder, toPeft, type AdaptedModule } from "../runtime/peft.js";
import { CheckpointError, SafetensorsFile, writeSafetensors } from "../runtime/safetensors.js";
import { initializeWithWeights } from "../runtime/trainer.js";
import { compiling } from "./jit.js";
import { failureDiagnostic } from "./failures.js";
import { cannotWrite, readSource } from "./files.js";
import { report, type ReportOptions } from "./report.js";

export interface ExportCommandOptions extends ReportOptions {
  peft?: string;
  merged?: string;
  /** The .lrk program, when the run or weights do not say (or to override what they say). */
  program?: string;
  train?: string;
}

/** The weights file, and the program and train block that wrote it. */
interface Source {
  weights: string;
  program?: string;
  train?: string;
  /** The program text's SHA-256 the run recorded (run.json). */
  sourceSha256?: string;
}

export async function exportCommand(input: string, options: ExportCommandOptions): Promise<number> {
  if (!options.peft === !options.merged) {
    process.stderr.write("error: pass one of --peft DIR and --merged DIR\n");
    return 1;
  }
  const source = sourceOf(input);
  if ("severity" in source) return report([source], options);
  const programPath = options.program ?? source.program;
  if (!programPath)
    return report(
      [
        error("E0506", `\`${input}\` does not say which program wrote it`, undefined, {
          help: "pass the program with --program FILE.lrk",
        }),
      ],
      options,
    );
  const read = readSource(programPath);
  if ("diagnostic" in read) return report([read.diagnostic], options);
  // the adapters' settings (alpha, rank) come from the program: an edited one would export the
  // run's tensors with other settings
  const sha = createHash("sha256").update(read.file.text).digest("hex");
  if (!options.program && source.sourceSha256 && source.sourceSha256 !== sha)
    return report(
      [
        error(
          "E0506",
          `${programPath} changed since the run in \`${input}\` trained it`,
          undefined,
          {
            help: "restore the program as it was, or pass it explicitly with --program FILE.lrk if its adapters are unchanged",
          },
        ),
      ],
      options,
    );
  const train = options.train ?? source.train;
  const { compiled, diagnostics } = compiling(() => compile(read.file, { train }));
  if (!compiled) return report(diagnostics, options) || 1;
  const { program } = compiled;
  try {
    const weights = loadCheckpoint(resolve(source.weights), program, checkpointUses.weights);
    const byPath = new Map<string, Tensor>();
    for (const [name, t] of weights.tensors)
      if (name.startsWith("param:")) byPath.set(name.slice("param:".length), t);
    if (options.peft) {
      const stored = await storedValues(compiled, weights.tensors, weights.missing.length > 0);
      return exportPeft(compiled, byPath, stored, options.peft, diagnostics, options);
    }
    const merge = compileMerge(read.file, { train });
    if (!merge.merge) return report([...diagnostics, ...merge.diagnostics], options) || 1;
    // the base, the run's weights over it, then the adapters' stored buffers recomputed from
    // those (as `lrkc eval --weights` does)
    const device = new CpuDevice({ float64: false });
    // (the `init` folder is read only when the weights lack some of the model: a run's final
    // weights hold all of it, so the export works after the base folder moved)
    const store = await initializeWithWeights(program, device, weights.tensors, {
      fromInit: weights.missing.length > 0,
    });
    const merged = await device.run(merge.merge, merge.merge.entry, store);
    const out = new Map<string, Tensor>();
    for (const p of program.params)
      if (p.origin === "model") out.set(p.path, store.get(`param:${p.path}`)!);
    for (const w of merge.merge.weights) out.set(w.weight, merged.get(w.output)!);
    const dir = options.merged!;
    const config = baseConfig(program.init?.path);
    // the source's dtype (config.json's torch_dtype), as a Hugging Face folder of it would be
    let floats = sourceFloats(config);
    const written = writeFolder(dir, (folder) => {
      const path = join(folder, "model.safetensors");
      try {
        writeSafetensors(path, out, { format: "pt" }, { floats });
      } catch (e) {
        // a merged value beyond F16's range: F32 rather than an infinity
        if (!(e instanceof RangeError) || floats !== "F16") throw e;
        floats = "F32";
        writeSafetensors(path, out, { format: "pt" }, { floats });
      }
      if (config) writeFileAtomic(join(folder, "config.json"), config);
    });
    if (written) return report([...diagnostics, written], options);
    if (!options.json)
      process.stderr.write(
        `wrote ${dir}: ${out.size} tensors (${floats}), ${merge.merge.weights.length} merged (${[...new Set(merge.merge.weights.map((w) => w.adapter))].join(", ")})\n`,
      );
    if (!config && !options.json)
      process.stderr.write(
        `note: no config.json written: the train block's \`init\` ${program.init ? `(${program.init.path}) holds none` : "is not a Hugging Face folder"}; copy the base model's config.json into ${dir}\n`,
      );
    return report(diagnostics, options);
  } catch (e) {
    const failure = failureDiagnostic(e, { program, checkpointFromCommandLine: true });
    if (failure) return report([...diagnostics, failure], options);
    throw e;
  }
}

/**
 * What RandLoRA's, PiSSA's and OLoRA's PEFT forms need beyond the run's parameters, computed on
 * the CPU interpreter as `--merged` does: the adapters' stored buffers (RandLoRA's bases) from the
 * run's weights, and the adapters' initial values (PiSSA's and OLoRA's A0, B0) from the same base
 * weights without the run's adapters. Both by path; empty for the other adapters.
 */
async function storedValues(
  compiled: Compiled,
  tensors: ReadonlyMap<string, Tensor>,
  fromInit: boolean,
): Promise<{ buffers: Map<string, Tensor>; initial: Map<string, Tensor> }> {
  const { program, placement } = compiled;
  const kinds = new Set(placement.adapters.map((a) => a.config.def.name.name));
  const buffers = new Map<string, Tensor>();
  const initial = new Map<string, Tensor>();
  if (!["randlora", "pissa", "olora"].some((k) => kinds.has(k))) return { buffers, initial };
  const device = new CpuDevice({ float64: false });
  const store = await initializeWithWeights(program, device, tensors, { fromInit });
  for (const [name, t] of store)
    if (name.startsWith("buffer:")) buffers.set(name.slice("buffer:".length), t);
  const adapterParams = new Set(
    program.params.filter((p) => p.origin === "adapter").map((p) => `param:${p.path}`),
  );
  const base = new Map([...tensors].filter(([name]) => !adapterParams.has(name)));
  const fresh = await initializeWithWeights(program, device, base, { fromInit });
  for (const name of adapterParams) initial.set(name.slice("param:".length), fresh.get(name)!);
  return { buffers, initial };
}

function exportPeft(
  compiled: Compiled,
  weights: ReadonlyMap<string, Tensor>,
  stored: { buffers: Map<string, Tensor>; initial: Map<string, Tensor> },
  dir: string,
  diagnostics: Diagnostic[],
  options: ExportCommandOptions,
): number {
  const { program, placement } = compiled;
  const adapted: AdaptedModule[] = placement.adapters.map((a) => ({
    module: a.module.path,
    adapter: a.config.def.name.name,
    args: Object.fromEntries(
      [...a.config.args].flatMap(([k, v]) => {
        const plain = plainValue(v);
        return plain === undefined ? [] : [[k, plain]];
      }),
    ),
    fanInFanOut: plainValue(a.module.scope.get("fan_in_fan_out")) === true,
  }));
  const modules = [
    ...new Set(
      program.params
        .filter((p) => p.origin === "model")
        .map((p) => p.path.slice(0, p.path.lastIndexOf("."))),
    ),
  ];
  const base = program.init?.path;
  const config = base ? readJson(join(base, "config.json")) : undefined;
  const architectures = (config?.["architectures"] as string[] | undefined) ?? [];
  let peft;
  try {
    peft = toPeft(adapted, weights, {
      modules,
      baseModel: (config?.["_name_or_path"] as string | undefined) || base || null,
      taskType: architectures.some((a) => /ForCausalLM$|LMHeadModel$/.test(a)) ? "CAUSAL_LM" : null,
      steps: program.steps,
      budgetTotal: placement.budgets[0]?.total,
      ...stored,
    });
  } catch (e) {
    if (!(e instanceof PeftError)) throw e;
    const at = placement.adapters[0]?.config.at;
    return report([...diagnostics, error("E0506", e.message, at, { help: e.help })], options);
  }
  const written = writeFolder(dir, (folder) => {
    writeSafetensors(join(folder, "adapter_model.safetensors"), peft.tensors, { format: "pt" });
    writeFileAtomic(
      join(folder, "adapter_config.json"),
      JSON.stringify(peft.config, null, 2) + "\n",
    );
  });
  if (written) return report([...diagnostics, written], options);
  if (!options.json)
    process.stderr.write(
      `wrote ${dir}: PEFT ${String(peft.config["peft_type"])} adapter, ${peft.tensors.size} tensors\n`,
    );
  return report(diagnostics, options);
}

/** A number, bool or string argument as JSON; anything else (a tensor) is left out. */
function plainValue(v: Value | undefined): number | boolean | string | undefined {
  if (v?.kind === "number") return v.value;
  if (v?.kind === "bool") return v.value;
  if (v?.kind === "string") return v.value;
  return undefined;
}

/** Writes into `dir` (made if missing); a file-system failure as a diagnostic (E0003). */
function writeFolder(dir: string, write: (dir: string) => void): Diagnostic | undefined {
  try {
    makeFolder(dir);
    write(dir);
    return undefined;
  } catch (e) {
    if (isFileSystemError(e)) return cannotWrite((e as NodeJS.ErrnoException).path ?? dir, e);
    throw e;
  }
}

/** A run folder (its run.json and final or checkpoint weights) or a weights file. */
function sourceOf(input: string): Source | Diagnostic {
  const missing = error(
    "E0506",
    `\`${input}\` is neither a run folder nor a weights file`,
    undefined,
    {
      help: "pass a run folder (`runs/NAME`, written by `lrkc train`) or its final.safetensors",
    },
  );
  if (!existsSync(input)) return missing;
  if (statSync(input).isDirectory()) {
    const record = readJson(join(input, "run.json"));
    const weights = ["final.safetensors", "checkpoint.safetensors"]
      .map((f) => join(input, f))
      .find((f) => existsSync(f));
    if (!weights) return missing;
    return {
      weights,
      program: record?.["program"] as string | undefined,
      train: record?.["train"] as string | undefined,
      sourceSha256: record?.["source_sha256"] as string | undefined,
    };
  }
  // final.safetensors says which program and block wrote it
  try {
    const file = SafetensorsFile.open(input);
    try {
      return { weights: input, program: file.metadata["program"], train: file.metadata["train"] };
    } finally {
      file.close();
    }
  } catch {
    return { weights: input };
  }
}

function readJson(path: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/** F16 or BF16 when config.json's torch_dtype says so, else F32. */
function sourceFloats(config: string | undefined): "F32" | "F16" | "BF16" {
  let dtype: unknown;
  try {
    dtype = config ? (JSON.parse(config) as Record<string, unknown>)["torch_dtype"] : undefined;
  } catch {
    dtype = undefined;
  }
  return dtype === "float16" ? "F16" : dtype === "bfloat16" ? "BF16" : "F32";
}

/** The base model's config.json (from the `init` folder), as it is, for the merged folder. */
function baseConfig(init: string | undefined): string | undefined {
  if (!init) return undefined;
  try {
    return readFileSync(join(init, "config.json"), "utf8");
  } catch {
    return undefined;
  }
}

/**
 * `--init-adapters PATH` (train, eval): the adapters' starting values, from a PEFT adapter folder
 * (adapter_config.json + adapter_model.safetensors) or a safetensors file naming adapter
 * parameters by path (a run's adapters.safetensors or final.safetensors). Every adapter parameter
 * of the program must be there; a PEFT config whose rank, alpha or rslora differ from the
 * program's adapters is refused (the same tensors would compute another function). Throws
 * CheckpointError (E0502).
 */
export function loadInitAdapters(
  path: string,
  compiled: Compiled,
  given = `--init-adapters ${path}`,
): Map<string, Tensor> {
  const { program, placement } = compiled;
  const adapterParams = program.params.filter((p) => p.origin === "adapter");
  if (adapterParams.length === 0)
    throw new CheckpointError(
      `${given}: the program adapts no module`,
      "add the `adapt` rules the adapter was trained with",
    );
  if (existsSync(join(path, "adapter_config.json"))) {
    const { tensors, config } = readPeftFolder(path, program.params, (p) => {
      const json = readJson(p);
      if (!json)
        throw new CheckpointError(`${p} is not a JSON object`, "pass a PEFT adapter folder");
      return json;
    });
    for (const a of placement.adapters) checkPeftSettings(path, a, config);
    return tensors;
  }
  const loaded = loadCheckpoint(resolve(path), program, checkpointUses.weights);
  const tensors = new Map<string, Tensor>();
  for (const p of adapterParams) {
    const t = loaded.tensors.get(`param:${p.path}`);
    if (!t)
      throw new CheckpointError(
        `${path} has no \`${p.path}\``,
        "pass the adapters.safetensors (or final.safetensors) of a run with the same `adapt` rules",
      );
    tensors.set(`param:${p.path}`, t);
  }
  return tensors;
}

/**
 * The adapters to start from: `--init-adapters` (`flag`, relative to the working directory), else
 * the block's `init_adapters` (relative to the program; its errors are reported at that line),
 * else none. The flag replaces the setting as `--init` replaces `init`, with a note saying so.
 */
export function initialAdapters(
  flag: string | undefined,
  compiled: Compiled,
  note: (text: string) => void,
): Map<string, Tensor> | undefined {
  const setting = compiled.program.initAdapters;
  if (flag !== undefined) {
    if (setting)
      note(`--init-adapters ${flag} replaces the block's \`init_adapters\` (${setting.path})`);
    return loadInitAdapters(flag, compiled);
  }
  if (!setting) return undefined;
  try {
    return loadInitAdapters(setting.path, compiled, `\`init_adapters "${setting.path}"\``);
  } catch (e) {
    // reported at the setting, as a `load` call's file is at the call (cli/failures.ts)
    if (e instanceof CheckpointError && (e as { at?: unknown }).at === undefined)
      Object.assign(e, { at: setting.at });
    throw e;
  }
}

/**
 * What `lrkc eval` and `generate` start from, read before the device opens (a bad file fails
 * fast): `--weights` (`weights`, relative to the working directory), which replaces the block's
 * starting point, its `init_adapters` included (the file holds the adapters); and the adapters of
 * `--init-adapters` (`flag`) or, without `--weights`, the block's setting. Throws what
 * `failureDiagnostic` reports.
 */
export function startingPoint(
  compiled: Compiled,
  weights: string | undefined,
  flag: string | undefined,
  note: (text: string) => void,
): { weights?: LoadedCheckpoint; adapters?: Map<string, Tensor> } {
  const { program } = compiled;
  const loaded =
    weights !== undefined
      ? loadCheckpoint(resolve(weights), program, checkpointUses.weights)
      : undefined;
  const adapters =
    flag !== undefined || (weights === undefined && program.initAdapters !== undefined)
      ? initialAdapters(flag, compiled, note)
      : undefined;
  return { ...(loaded ? { weights: loaded } : {}), ...(adapters ? { adapters } : {}) };
}

/** The PEFT config's rank, alpha and rslora for this module, against the adapter's arguments. */
function checkPeftSettings(
  path: string,
  a: Compiled["placement"]["adapters"][number],
  config: Record<string, unknown>,
): void {
  const name = a.config.def.name.name;
  const arg = (k: string) => plainValue(a.config.args.get(k));
  const pattern = (field: string) => {
    const entries = Object.entries((config[field] as Record<string, number> | null) ?? {});
    return entries.find(([k]) => a.module.path === k || a.module.path.endsWith(`.${k}`))?.[1];
  };
  const wants: [string, unknown, unknown][] =
    name === "adalora"
      ? [
          ["init_rank", arg("init_rank"), config["init_r"]],
          ["alpha", arg("alpha"), config["lora_alpha"]],
        ]
      : [
          ["rank", arg("rank"), pattern("rank_pattern") ?? config["r"]],
          [
            "alpha",
            arg("alpha"),
            pattern("alpha_pattern") ?? config["lora_alpha"] ?? config["randlora_alpha"],
          ],
          ["rslora", arg("rslora") ?? false, config["use_rslora"] ?? false],
        ];
  for (const [k, mine, theirs] of wants)
    if (theirs !== undefined && mine !== theirs)
      throw new CheckpointError(
        `\`${a.module.path}\` is adapted with \`${name}(${k}: ${String(mine)})\`, but the PEFT adapter in ${path} was trained with ${k} ${String(theirs)}`,
        `adapt it with \`${name}(…, ${k}: ${String(theirs)})\`, as the adapter was trained`,
      );
}
