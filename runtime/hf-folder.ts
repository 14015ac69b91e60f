// A Hugging Face checkpoint folder: `model.safetensors`, or shards listed by
// `model.safetensors.index.json` (`{"metadata": {"total_size": …}, "weight_map": {tensor: file}}`).
// Every file is opened and its header checked before any tensor is read, and the index is checked
// against the shards' headers, so a broken download is refused before loading starts.
import {
  closeSync,
  constants,
  existsSync,
  fstatSync,
  openSync,
  readdirSync,
  readSync,
} from "node:fs";
import { join } from "node:path";
import { CheckpointError, SafetensorsFile } from "./safetensors.js";

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

/** No index is this large (a model with a million tensors); a larger one is not an index. */
const MAX_INDEX_BYTES = 64 << 20;

/** The folder's safetensors files, open, with headers checked; the caller closes them. */
export function openFolder(folder: string, maxBytes: number): SafetensorsFile[] {
  const index = join(folder, INDEX_FILE);
  if (existsSync(index)) return openShards(folder, index, maxBytes);
  const single = join(folder, SINGLE_FILE);
  if (existsSync(single)) return [SafetensorsFile.open(single, { maxBytes })];
  throw new CheckpointError(
    `\`${folder}\` is a folder without ${SINGLE_FILE} or ${INDEX_FILE}`,
    whatFolderHolds(folder),
  );
}

/** Adapter folders PEFT writes: their weights apply to a base model, which `init` loads. */
const ADAPTER_FILES = ["adapter_model.safetensors", "adapter_model.bin"];

/**
 * The help for a folder lrk cannot read as a checkpoint, from what it does hold: PyTorch's pickled
 * weights (one file or shards with their index) are refused with the command that converts them,
 * a PEFT adapter is pointed at its base model, and other safetensors files are named.
 */
function whatFolderHolds(folder: string): string {
  let names: string[];
  try {
    names = readdirSync(folder).sort();
  } catch {
    names = [];
  }
  const pickles = names.filter((n) => /^pytorch_model(-\d+-of-\d+)?\.bin(\.index\.json)?$/.test(n));
  const convert =
    "lrk does not read pickles (they can run code when loaded): load the model in Python with transformers and save it again with `model.save_pretrained(folder, safe_serialization=True)`, which writes model.safetensors";
  if (pickles.length > 0)
    return `it holds ${listNames(pickles)}, PyTorch's pickled weights; ${convert}`;
  const adapter = names.find((n) => ADAPTER_FILES.includes(n));
  if (adapter)
    return `it holds ${adapter}, a PEFT adapter: \`init\` the base model it was trained on (adapter_config.json's base_model_name_or_path) and name this folder in \`init_adapters\` (or \`--init-adapters\`)`;
  const tensors = names.filter((n) => n.endsWith(".safetensors"));
  if (tensors.length > 0)
    return `it holds ${listNames(tensors)}: pass the file itself, or rename it to ${SINGLE_FILE}`;
  return `a Hugging Face checkpoint folder holds ${SINGLE_FILE}, or shards with ${INDEX_FILE}; a run folder holds final.safetensors`;
}

const listNames = (names: readonly string[]) =>
  names.length <= 3
    ? names.map((n) => `\`${n}\``).join(", ")
    : `${names
        .slice(0, 3)
        .map((n) => `\`${n}\``)
        .join(", ")} and ${names.length - 3} more`;

function openShards(folder: string, index: string, maxBytes: number): SafetensorsFile[] {
  const bad = (why: string, help = "the index is damaged: download it again") =>
    new CheckpointError(`\`${index}\` ${why}`, help);
  let parsed: unknown;
  try {
    parsed = JSON.parse(readSmall(index));
  } catch (e) {
    if (e instanceof CheckpointError) throw e;
    throw bad(`is not valid JSON: ${(e as Error).message}`);
  }
  const weightMap = isObject(parsed) ? parsed["weight_map"] : undefined;
  if (!isObject(weightMap)) throw bad("has no `weight_map` object (tensor name → shard file)");
  const metadata = isObject(parsed) ? parsed["metadata"] : undefined;
  if (metadata !== undefined && !isObject(metadata))
    throw bad("has a `metadata` that is not an object");
  const shardOf = new Map<string, string>();
  for (const [tensor, file] of Object.entries(weightMap)) {
    if (typeof file !== "string")
      throw bad(`maps \`${tensor}\` to ${JSON.stringify(file)}, not a file name`);
    // Shards lie in the folder itself: a path would read files outside the checkpoint.
    if (file === "" || file.includes("/") || file.includes("\\") || file === "." || file === "..")
      throw bad(`maps \`${tensor}\` to \`${file}\`, which is not a file name in the folder`);
    shardOf.set(tensor, file);
  }
  const names = [...new Set(shardOf.values())].sort();
  if (names.length === 0) throw bad("lists no tensors in its `weight_map`");
  for (const name of names)
    if (!existsSync(join(folder, name)))
      throw new CheckpointError(
        `\`${folder}\` lacks \`${name}\`, a shard its ${INDEX_FILE} lists`,
        "the download is incomplete: fetch the missing shard",
      );
  const files: SafetensorsFile[] = [];
  try {
    for (const name of names) files.push(SafetensorsFile.open(join(folder, name), { maxBytes }));
    const byName = new Map(names.map((name, i) => [name, files[i]!]));
    for (const [tensor, name] of shardOf)
      if (!byName.get(name)!.entries.has(tensor))
        throw bad(
          `maps \`${tensor}\` to \`${name}\`, which does not hold it`,
          "the index and the shards come from different checkpoints: download them again together",
        );
    checkTotalSize(metadata, shardOf, byName, bad);
    return files;
  } catch (e) {
    for (const file of files) file.close();
    throw e;
  }
}

/**
 * `metadata.total_size`, where the index has one, is the bytes of every tensor it lists (as
 * Hugging Face's sharding writes it: each tensor's data once). A shard replaced by one of another
 * checkpoint or dtype, or truncated and re-saved, can still hold every listed name; the sum is
 * what catches it before a model trains on the wrong weights.
 */
function checkTotalSize(
  metadata: Record<string, unknown> | undefined,
  shardOf: ReadonlyMap<string, string>,
  byName: ReadonlyMap<string, SafetensorsFile>,
  bad: (why: string, help?: string) => CheckpointError,
): void {
  const declared = metadata?.["total_size"];
  if (declared === undefined) return;
  if (typeof declared !== "number" || !Number.isInteger(declared) || declared < 0)
    throw bad(
      `has a \`metadata.total_size\` of ${JSON.stringify(declared)}, not a whole number of bytes`,
      "the index is damaged: download it again (or delete its `metadata` if you wrote it yourself)",
    );
  let total = 0;
  for (const [tensor, name] of shardOf) {
    const entry = byName.get(name)!.entries.get(tensor)!;
    total += entry.end - entry.begin;
  }
  if (total !== declared)
    throw bad(
      `says \`metadata.total_size\` is ${declared} bytes, but the ${shardOf.size} tensors it lists hold ${total} bytes in its shards`,
      "the index and the shards come from different checkpoints (or a shard was re-saved): download them again together; if you re-saved the shards yourself, write the new total_size (or delete `metadata`)",
    );
}

/** A regular file of at most MAX_INDEX_BYTES, as text. */
function readSmall(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new CheckpointError(`cannot read \`${path}\`: ${(e as Error).message}`);
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new CheckpointError(`\`${path}\` is not a regular file`);
    if (stat.size > MAX_INDEX_BYTES)
      throw new CheckpointError(`\`${path}\` is ${stat.size} bytes, too large for an index`);
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

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);
