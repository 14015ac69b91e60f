// Loading a safetensors file into a program's store, for every caller: a train block's `init`,
// `lrkc train --resume` (the run folder's checkpoint) and `lrkc eval --weights`. One function
// checks every tensor it uses against the program (shape and dtype) and names the problem the
// same way for all three; they differ only in what the file must hold and what it may hold.
//
// A file names parameters by path (`l1.weight`, a run's final.safetensors) or by store name
// (`param:l1.weight`, `state:l1.weight:m`, `buffer:…`, a run's checkpoint.safetensors); both are
// read by every caller. `init` and `--weights` may also name a Hugging Face checkpoint folder
// (hf-folder.ts): its tensors are named by the model's paths, and those the model does not use
// are left out with a note. Headers are checked first; then only the tensors used are read.
import type { DType } from "../compiler/ir.js";
import { renamed, type RenameRule, type Tensor, type TrainProgram } from "../compiler/program.js";
import { statSync } from "node:fs";
import { openFolder } from "./hf-folder.js";
import { CheckpointError, SafetensorsFile, type SafetensorsEntry } from "./safetensors.js";

export interface CheckpointOptions {
  /** Which caller reads the file: it picks the help texts. */
  use: "init" | "resume" | "weights";
  /**
   * What the file must hold: every model parameter (`init`), every parameter, buffer and state
   * the step reads (`--resume`), or at least one of the program's parameters (`--weights`).
   */
  required: "model" | "step" | "some";
  /** Load adapter parameters; otherwise they are checked and left out (they initialize later). */
  adapters: boolean;
  /**
   * Load the step's states and quantized buffers; otherwise the file's `state:` and `buffer:`
   * tensors are not read at all (the program computes its own).
   */
  states: boolean;
  /**
   * Tensors that are none of the program's: `refuse` them, allow only `adapters` of the model's
   * modules (a LoRA run's `l1.lora.A` when this program has no such adapter), `keep` them in the
   * store unchecked (a resumed run saves them again), or `ignore` them.
   */
  extra: "refuse" | "adapters" | "keep" | "ignore";
}

export interface LoadedCheckpoint {
  /** By store name (`param:<path>`, `state:<name>`, `buffer:<name>`). */
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
  /** Parameter paths of the program the file lacks (only `required: "some"` allows any). */
  missing: string[];
  /** The file's parameters that are none of the program's, left out (`extra: "ignore"`). */
  unused: string[];
}

/** A tensor the program has: where it comes from, and the shape and dtype it must have. */
interface Expected {
  /** A model or adapter parameter, or a buffer or state only the step has. */
  kind: "model" | "adapter" | "step";
  /** The step reads it (what `--resume` needs). */
  inStep: boolean;
  shape: readonly number[];
  dtype: DType;
}

/** The options each caller reads with. */
export const checkpointUses = {
  init: { use: "init", required: "model", adapters: false, states: false, extra: "adapters" },
  resume: { use: "resume", required: "step", adapters: true, states: true, extra: "keep" },
  weights: { use: "weights", required: "some", adapters: true, states: false, extra: "ignore" },
} as const satisfies Record<string, CheckpointOptions>;

const help = {
  init: {
    missing: "was it saved from a different model or with different arguments?",
    mismatch: "the checkpoint was saved from a model with other dimensions",
  },
  resume: {
    missing:
      "the program changed since the checkpoint was written; start without --resume (or with another --out)",
    mismatch:
      "the program changed since the checkpoint was written; start without --resume (or with another --out)",
  },
  weights: {
    missing: "pass a run's final.safetensors or checkpoint.safetensors",
    mismatch: "evaluate with weights written by this program (or its train block)",
  },
} as const;

/** A Hugging Face folder is read by the model's paths, which come from its config. */
const folderHelp = {
  missing:
    'configure the model from this folder\'s own config.json (`hf_config("…")`), and check that the folder holds the model it says',
  mismatch:
    'configure the model from this folder\'s own config.json (`hf_config("…")`): the checkpoint was saved from a model with other dimensions',
};

/**
 * A Hugging Face folder with every weight but the language-model head was saved from the base
 * model (LlamaModel) or from another head (…ForSequenceClassification's `score`).
 */
const HEADLESS_HELP =
  "the folder holds the model without its language-model head (saved from the base model, e.g. LlamaModel, or with another head, e.g. …ForSequenceClassification: see config.json's `architectures`); load a checkpoint saved from …ForCausalLM";

/** Bytes per element at most (F64), times room for a checkpoint's copies, plus the header. */
const SIZE_ROOM = 8 * 4;
const HEADER_ROOM = 64 << 20;

export function loadCheckpoint(
  path: string,
  program: TrainProgram,
  options: CheckpointOptions,
): LoadedCheckpoint {
  const expected = expectedTensors(program);
  let elements = 0;
  for (const e of expected.values()) elements += count(e.shape);
  const maxBytes = HEADER_ROOM + SIZE_ROOM * elements;
  // A Hugging Face folder carries buffers no lrk model has (GPT-2's attention masks, rotary
  // tables): they are left out with a note, wherever the folder is read from.
  const folder = isFolder(path);
  const files = folder ? openFolder(path, maxBytes) : [SafetensorsFile.open(path, { maxBytes })];
  // the block's `init_rename` rules read the `init` checkpoint's names as the model's
  const rename = options.use === "init" ? program.initRename?.rules : undefined;
  const read = { ...options, ...(rename ? { rename } : {}) };
  try {
    return folder
      ? loadFrom(
          path,
          files,
          expected,
          program,
          { ...read, extra: "ignore", basePrefix: true },
          folderHelp,
        )
      : loadFrom(path, files, expected, program, read, help[options.use]);
  } finally {
    for (const file of files) file.close();
  }
}

/** Which tensor of which file a store name is read from. */
interface Source {
  key: string;
  file: SafetensorsFile;
  entry: SafetensorsEntry;
}

function loadFrom(
  path: string,
  files: readonly SafetensorsFile[],
  expected: ReadonlyMap<string, Expected>,
  program: TrainProgram,
  options: CheckpointOptions & { basePrefix?: boolean; rename?: readonly RenameRule[] },
  helps: { missing: string; mismatch: string },
): LoadedCheckpoint {
  const byStoreName = new Map<string, Source>();
  for (const file of files)
    for (const [key, entry] of file.entries) {
      const name = storeName(options.rename ? renamed(options.rename, key) : key);
      const twice = byStoreName.get(name);
      if (twice)
        throw new CheckpointError(
          twice.file === file
            ? `\`${path}\` holds \`${label(name)}\` twice, as \`${twice.key}\` and as \`${key}\``
            : `\`${label(name)}\` is in both \`${twice.file.path}\` and \`${file.path}\``,
          options.rename
            ? "two of its names are one after `init_rename`: make the rules tell them apart"
            : "keep one of them",
        );
      byStoreName.set(name, { key, file, entry });
    }

  if (options.basePrefix) addBasePrefix(byStoreName, expected);

  const tensors = new Map<string, Tensor>();
  const extra: string[] = [];
  const unused: string[] = [];
  const modules = modulePaths(program);
  for (const [name, { key, file, entry }] of byStoreName) {
    const want = expected.get(name);
    if (!want) {
      if (!name.startsWith("param:") && !options.states) continue;
      if (options.extra === "keep") tensors.set(name, file.read(key));
      else if (options.extra === "refuse") extra.push(key);
      else if (options.extra === "adapters" && !isAdapterOf(modules, name)) extra.push(key);
      else if (options.extra === "ignore") unused.push(key);
      continue;
    }
    if (want.kind === "step" && !options.states) continue;
    check(file.path, key, entry, want, helps.mismatch);
    if (want.kind === "adapter" && !options.adapters) continue;
    tensors.set(name, file.read(key));
  }
  const metadata = files.length === 1 ? files[0]!.metadata : {};
  const requiredNames = [...expected]
    .filter(([, e]) =>
      options.required === "model"
        ? e.kind === "model"
        : options.required === "step"
          ? e.inStep
          : false,
    )
    .map(([name]) => name);
  const missingRequired = requiredNames.filter((name) => !byStoreName.has(name));
  if (missingRequired.length > 0)
    throw new CheckpointError(
      `\`${path}\` has no tensor for ${listed(missingRequired.map(label))}`,
      options.basePrefix && missingRequired.every((n) => n.startsWith("param:lm_head."))
        ? HEADLESS_HELP
        : helps.missing,
    );
  const params = [...expected.keys()].filter((n) => n.startsWith("param:"));
  const missing = params.filter((n) => !byStoreName.has(n)).map(label);
  if (options.required === "some" && missing.length === params.length)
    throw new CheckpointError(`\`${path}\` has none of this model's parameters`, helps.missing);
  if (extra.length > 0)
    throw new CheckpointError(
      `\`${path}\` has tensors the model does not: ${listed(extra)}`,
      "was it saved from a different model?",
    );
  return { tensors, metadata, missing, unused };
}

/**
 * A checkpoint saved from a Hugging Face base model (GPT2Model rather than GPT2LMHeadModel, as
 * the original `gpt2` files are) names its tensors without the base model's prefix: `wte.weight`
 * for `transformer.wte.weight`. As Hugging Face's loader does, when the file holds no tensor under
 * a prefix the model's paths start with, the model's `prefix.rest` is read from the file's `rest`.
 */
function addBasePrefix(
  byStoreName: Map<string, Source>,
  expected: ReadonlyMap<string, Expected>,
): void {
  const prefixes = new Set<string>();
  for (const [name, e] of expected)
    if (e.kind === "model" && name.startsWith("param:") && name.includes("."))
      prefixes.add(name.slice("param:".length, name.indexOf(".")));
  for (const prefix of prefixes) {
    const under = `param:${prefix}.`;
    if ([...byStoreName.keys()].some((n) => n.startsWith(under))) continue;
    for (const name of expected.keys()) {
      if (!name.startsWith(under)) continue;
      const bare = `param:${name.slice(under.length)}`;
      const source = byStoreName.get(bare);
      if (!source || expected.has(bare)) continue;
      byStoreName.delete(bare);
      byStoreName.set(name, source);
    }
  }
}

/** The note for tensors a checkpoint holds that the model does not use. */
export function unusedNote(path: string, unused: readonly string[]): string | undefined {
  if (unused.length === 0) return undefined;
  const n = unused.length;
  return `\`${path}\` holds ${n} tensor${n === 1 ? "" : "s"} the model does not use, left out: ${listed([...unused].sort())}`;
}

function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false; // opening it says why
  }
}

/**
 * The program's tensors by store name: its parameters (model and adapter), and every parameter,
 * quantized buffer and state the step reads, with the step's shapes and dtypes.
 */
function expectedTensors(program: TrainProgram): Map<string, Expected> {
  const expected = new Map<string, Expected>();
  for (const p of program.params)
    expected.set(`param:${p.path}`, {
      kind: p.origin,
      inStep: false,
      shape: p.shape,
      dtype: p.dtype,
    });
  for (const input of program.step.inputs) {
    if (input.role !== "param" && input.role !== "state") continue;
    const known = expected.get(input.name);
    expected.set(input.name, {
      kind: known?.kind ?? "step",
      inStep: true,
      shape: input.shape,
      dtype: input.dtype,
    });
  }
  return expected;
}

/** A file's key as a store name: bare paths are parameters. */
function storeName(key: string): string {
  return /^(param|state|buffer):/.test(key) ? key : `param:${key}`;
}

/** How messages name a store name: parameters by path, the others by their full name. */
const label = (name: string) => (name.startsWith("param:") ? name.slice("param:".length) : name);

/** The paths of the modules that own the model's parameters (`l1` for `l1.weight`). */
function modulePaths(program: TrainProgram): Set<string> {
  const modules = new Set<string>();
  for (const p of program.params) {
    if (p.origin !== "model") continue;
    const parts = p.path.split(".");
    for (let i = 1; i < parts.length; i++) modules.add(parts.slice(0, i).join("."));
  }
  return modules;
}

/** `param:l1.lora.A`: a parameter of an adapter (`lora`) on a model module (`l1`). */
function isAdapterOf(modules: ReadonlySet<string>, name: string): boolean {
  if (!name.startsWith("param:")) return false;
  const parts = label(name).split(".");
  return parts.length >= 3 && modules.has(parts.slice(0, -2).join("."));
}

/** The tensor's shape and dtype against the program's, compared and printed as numbers. */
function check(
  path: string,
  key: string,
  t: SafetensorsEntry,
  want: Expected,
  mismatch: string,
): void {
  const dtype = t.dtype;
  const whose = want.kind === "step" ? "the program's" : "the model's";
  const shape = want.shape.map(Number);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    throw new CheckpointError(
      `\`${label(storeName(key))}\` in \`${path}\` is [${t.shape.join(", ")}], but ${whose} is [${shape.join(", ")}]`,
      mismatch,
    );
  const float = dtype !== "I32";
  if (float !== (want.dtype === "f32"))
    throw new CheckpointError(
      `\`${label(storeName(key))}\` in \`${path}\` holds ${dtype} values, but ${whose} is ${want.dtype}`,
      want.dtype === "f32"
        ? "store it as F32 (or F64, F16, BF16): integers are not read as weights"
        : "store it as I32",
    );
}

const count = (shape: readonly number[]) => shape.reduce((a, b) => a * Number(b), 1);

const listed = (names: string[]) =>
  `${names
    .slice(0, 3)
    .map((m) => `\`${m}\``)
    .join(", ")}${names.length > 3 ? ` and ${names.length - 3} more` : ""}`;
