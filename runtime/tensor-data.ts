// `std.data.tensors` at run time: the rows of the tensor pairs the compiler chose (from the
// files' headers) become examples, `input` and `target` f32 rows. Rows are gathered in the
// program's order (files sorted by name, tensors by name within a file, rows in order), the last
// `valid` of them held out; train batches walk the per-epoch shuffled order of the other sources.
import { dirname } from "node:path";
import type { DataSpec } from "../compiler/program.js";
import { DataError, EpochOrder, type Batch, type DataSource, type Split } from "./data.js";
import { CheckpointError, SafetensorsFile } from "./safetensors.js";
import { selectTensors, type TensorPair } from "./tensor-files.js";

export interface TensorsSource extends DataSource {
  readonly kind: "tensors";
  readonly inputWidth: number;
  readonly targetWidth: number;
}

export interface TensorsParams {
  pairs: readonly TensorPair[];
  valid: number;
  skipEmpty: boolean;
  seed: number;
  help?: string;
}

/** Every pair's rows, read now: [rows · width] for inputs and targets. */
function gather(pairs: readonly TensorPair[], skipEmpty: boolean) {
  const inputs: Float32Array[] = [];
  const targets: Float32Array[] = [];
  let inputWidth = 0;
  let targetWidth = 0;
  for (const pair of pairs) {
    let file: SafetensorsFile;
    try {
      file = SafetensorsFile.open(pair.file);
    } catch (e) {
      if (e instanceof CheckpointError) throw new DataError(e.message, e.help);
      throw e;
    }
    try {
      const read = (name: string) => {
        try {
          return file.read(name);
        } catch (e) {
          if (e instanceof CheckpointError)
            throw new DataError(
              `${e.message} (it changed since the program was compiled?)`,
              "compile and run again",
            );
          throw e;
        }
      };
      const x = read(pair.input);
      const y = read(pair.target);
      inputWidth = x.shape[x.shape.length - 1]!;
      targetWidth = y.shape[y.shape.length - 1]!;
      if (x.data.length !== pair.rows * inputWidth || y.data.length !== pair.rows * targetWidth)
        throw new DataError(
          `\`${pair.input}\` or \`${pair.target}\` in "${pair.file}" changed shape since the program was compiled`,
          "compile and run again",
        );
      for (let r = 0; r < pair.rows; r++) {
        const row = Float32Array.from(x.data.subarray(r * inputWidth, (r + 1) * inputWidth));
        if (skipEmpty && row.every((v) => v === 0)) continue;
        inputs.push(row);
        targets.push(Float32Array.from(y.data.subarray(r * targetWidth, (r + 1) * targetWidth)));
      }
    } finally {
      file.close();
    }
  }
  return { inputs, targets, inputWidth, targetWidth };
}

export function tensorRows(params: TensorsParams): TensorsSource {
  const { inputs, targets, inputWidth, targetWidth } = gather(params.pairs, params.skipEmpty);
  const n = inputs.length;
  const validN = params.valid;
  if (n - validN < 1)
    throw new DataError(
      `the tensors have ${n} row${n === 1 ? "" : "s"}${params.skipEmpty ? " that are not all zeros" : ""}, too few to hold out ${validN} for valid and train on the rest`,
      validN > 0 ? `hold out fewer rows: valid: ${Math.max(0, n - 1)}` : params.help,
    );
  const trainN = n - validN;
  const order = new EpochOrder(trainN, params.seed);
  const rows = (ids: ArrayLike<number>): Batch => {
    const m = ids.length;
    const input = new Float32Array(m * inputWidth);
    const target = new Float32Array(m * targetWidth);
    for (let r = 0; r < m; r++) {
      input.set(inputs[ids[r]!]!, r * inputWidth);
      target.set(targets[ids[r]!]!, r * targetWidth);
    }
    return {
      fields: {
        input: { shape: [m, inputWidth], dtype: "f32", data: input },
        target: { shape: [m, targetWidth], dtype: "f32", data: target },
      },
      examples: m,
    };
  };
  return {
    kind: "tensors",
    vocab: 0,
    trainSize: trainN,
    validSize: validN,
    inputWidth,
    targetWidth,
    fieldShapes: (batch) => ({
      input: { shape: [batch, inputWidth], dtype: "f32" },
      target: { shape: [batch, targetWidth], dtype: "f32" },
    }),
    batch(split: Split, index: number, batchSize: number) {
      if (split === "train") return rows(order.indices(index, batchSize));
      if (validN === 0)
        throw new DataError(
          "the tensors data set holds out no valid rows",
          "give `valid: N` to hold out the last N rows",
        );
      const start = index * batchSize;
      if (!Number.isInteger(index) || index < 0 || start >= validN)
        throw new RangeError(`valid batch ${index} is past the end: the split has ${validN} rows`);
      const count = Math.min(batchSize, validN - start);
      return rows(Array.from({ length: count }, (_, r) => trainN + start + r));
    },
    batchCount: (split, batchSize) => Math.ceil((split === "train" ? trainN : validN) / batchSize),
    trainPosition: (index, batchSize) => order.position(index, batchSize),
  };
}

/**
 * A `tensors` declaration, opened lazily: the files are found, paired and read when the first
 * size or batch is asked for (by training, not by `lrkc check`: they are often the output of a
 * run not made yet, like an `init` checkpoint). Problems are DataErrors at the declaration.
 */
export function openTensors(
  spec: DataSpec,
  args: { valid: number; skipEmpty: boolean; seed: number },
): TensorsSource {
  const widths = {
    input: spec.fields["input"]!.shape[1]!,
    target: spec.fields["target"]!.shape[1]!,
  };
  let opened: TensorsSource | undefined;
  const open = (): TensorsSource => {
    if (opened) return opened;
    const fail = (message: string, help?: string): never => {
      const error = new DataError(message, help);
      error.at = spec.at;
      throw error;
    };
    const path = String(spec.args["path"]);
    const selection = selectTensors(
      dirname(spec.at.file.path),
      path,
      String(spec.args["input"]),
      String(spec.args["target"]),
    );
    if (typeof selection === "string")
      return fail(
        selection,
        "a relative path is relative to the .lrk file that declares the data: train the program that writes the file first, or point `path` at it",
      );
    for (const field of ["input", "target"] as const) {
      const found = field === "input" ? selection.inputWidth : selection.targetWidth;
      if (found !== widths[field])
        fail(
          `the ${field} tensors are ${found} wide, but the declaration says \`${field}_width: ${widths[field]}\``,
          `write \`${field}_width: ${found}\`, or narrow \`${field}\` to tensors of width ${widths[field]}`,
        );
    }
    try {
      opened = tensorRows({ pairs: selection.pairs, ...args, help: spec.help });
    } catch (e) {
      if (e instanceof DataError) e.at ??= spec.at;
      throw e;
    }
    return opened;
  };
  return {
    kind: "tensors",
    vocab: 0,
    get trainSize() {
      return open().trainSize;
    },
    get validSize() {
      return open().validSize;
    },
    inputWidth: widths.input,
    targetWidth: widths.target,
    fieldShapes: (batch) => ({
      input: { shape: [batch, widths.input], dtype: "f32" },
      target: { shape: [batch, widths.target], dtype: "f32" },
    }),
    batch: (split, index, batchSize) => open().batch(split, index, batchSize),
    batchCount: (split, batchSize) => open().batchCount(split, batchSize),
    trainPosition: (index, batchSize) => open().trainPosition(index, batchSize),
  };
}
