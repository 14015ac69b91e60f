// `std.data.tensors`: which tensors of which safetensors files a data set reads, from the files'
// headers, when the data is opened (runtime/tensor-data.ts). A `*` in the file name matches any
// files of a folder and a
// `*` in a tensor name any part of it; an input tensor is paired with the target tensor whose
// name has the same `*` part (`state:*.next_lora:pairs_input` with `state:*.next_lora:pairs_target`
// pairs each module's two records).
import { readdirSync, statSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { CheckpointError, SafetensorsFile } from "./safetensors.js";

/** One (input, target) pair of tensors of a safetensors file whose rows are examples. */
export interface TensorPair {
  /** The absolute path of the file. */
  file: string;
  input: string;
  target: string;
  rows: number;
}

/** What a header says of a tensor. */
interface Entry {
  dtype: string;
  shape: number[];
}

/** The `*` pattern as a regular expression capturing what each `*` matched. */
function patternRegExp(pattern: string): RegExp {
  const escaped = pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${escaped.join("(.*)")}$`);
}

/** The files `path` names (a `*` only in its last part), sorted; a string is what is wrong. */
function expandFiles(dir: string, path: string): string[] | string {
  const full = resolve(dir, path);
  if (dirname(path).includes("*"))
    return `\`path\` "${path}" has a \`*\` in a folder name; only the file name may have one`;
  if (!basename(path).includes("*")) {
    try {
      if (!statSync(full).isFile()) return `"${path}" is not a file (looked for ${full})`;
    } catch {
      return `cannot find the file "${path}" (looked for ${full})`;
    }
    return [full];
  }
  const folder = dirname(full);
  const re = patternRegExp(basename(full));
  let names: string[];
  try {
    names = readdirSync(folder);
  } catch {
    return `cannot find the folder of "${path}" (looked for ${folder})`;
  }
  const files = names
    .filter((n) => re.test(n))
    .sort()
    .map((n) => resolve(folder, n));
  return files.length > 0 ? files : `no file matches "${path}" (looked in ${folder})`;
}

/** A safetensors file's header; a string is what is wrong with the file. */
function readTensorHeader(path: string): Map<string, Entry> | string {
  let file: SafetensorsFile;
  try {
    file = SafetensorsFile.open(path);
  } catch (e) {
    if (e instanceof CheckpointError) return e.message;
    throw e;
  }
  const entries = new Map<string, Entry>();
  for (const [name, e] of file.entries) entries.set(name, { dtype: e.dtype, shape: e.shape });
  file.close();
  return entries;
}

/** Rows and width of a tensor used as examples: [n, w] is n rows, [w] one row. */
function rowsOf(e: Entry): { rows: number; width: number } | undefined {
  if (e.shape.length === 1) return { rows: 1, width: e.shape[0]! };
  if (e.shape.length === 2) return { rows: e.shape[0]!, width: e.shape[1]! };
  return undefined;
}

export interface TensorSelection {
  pairs: TensorPair[];
  inputWidth: number;
  targetWidth: number;
}

/**
 * The (input, target) tensor pairs of every file `path` names, with the fields' widths; a string
 * is what is wrong (no file, no tensor matching, a tensor without a partner, widths that differ).
 */
export function selectTensors(
  dir: string,
  path: string,
  input: string,
  target: string,
): TensorSelection | string {
  const files = expandFiles(dir, path);
  if (typeof files === "string") return files;
  const inputRe = patternRegExp(input);
  const pairs: TensorPair[] = [];
  const widths = { input: -1, target: -1 };
  const first = { input: "", target: "" };
  const take = (field: "input" | "target", name: string, e: Entry): number | string => {
    const shape = rowsOf(e);
    if (!shape || !["F32", "F64", "F16", "BF16"].includes(e.dtype))
      return `the ${field} tensor \`${name}\` is ${e.dtype}[${e.shape.join(", ")}]: rows of floats ([rows, width] or [width]) are needed`;
    if (widths[field] >= 0 && widths[field] !== shape.width)
      return `the ${field} tensors have different widths: \`${first[field]}\` has ${widths[field]}, \`${name}\` ${shape.width}`;
    if (widths[field] < 0) [widths[field], first[field]] = [shape.width, name];
    return shape.rows;
  };
  for (const file of files) {
    const header = readTensorHeader(file);
    if (typeof header === "string") return header;
    for (const [name, e] of [...header].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      const m = inputRe.exec(name);
      if (!m) continue;
      const parts = m.slice(1);
      const partner = target.split("*").reduce((s, piece, i) => s + parts[i - 1]! + piece);
      const t = header.get(partner);
      if (target.split("*").length !== input.split("*").length)
        return `\`input\` and \`target\` must have as many \`*\`s: "${input}", "${target}"`;
      if (!t) return `"${file}" has the input tensor \`${name}\` but no target \`${partner}\``;
      const rows = take("input", name, e);
      if (typeof rows === "string") return rows;
      const targetRows = take("target", partner, t);
      if (typeof targetRows === "string") return targetRows;
      if (rows !== targetRows)
        return `\`${name}\` has ${rows} rows but \`${partner}\` ${targetRows}: an input row and a target row make an example`;
      pairs.push({ file, input: name, target: partner, rows });
    }
  }
  if (pairs.length === 0)
    return `no tensor of ${files.length === 1 ? `"${path}"` : `the ${files.length} files "${path}" names`} matches \`${input}\``;
  return { pairs, inputWidth: widths.input, targetWidth: widths.target };
}
