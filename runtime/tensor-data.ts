// `std.data.tensors` at run time: the rows of the tensor pairs the compiler chose (from the
// files' headers) become examples, `input` and `target` f32 rows. Rows are gathered in the
// program's order (files sorted by name, tensors by name within a file, rows in order), the last
// `valid` of them held out; train batches walk the per-epoch shuffled order of the other sources.
import type { DataSpec, TensorPair } from "../compiler/program.js";
import { DataError, EpochOrder, type Batch, type DataSource, type Split } from "./data.js";
import { CheckpointError, SafetensorsFile } from "./safetensors.js";

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

/** Opens a `tensors` declaration as the compiler resolved it. */
export function openTensors(
  spec: DataSpec,
  args: { valid: number; skipEmpty: boolean; seed: number },
) {
  if (!spec.tensors)
    throw new DataError("`tensors` was compiled without its tensor list", spec.help);
  return tensorRows({ pairs: spec.tensors, ...args, help: spec.help });
}
