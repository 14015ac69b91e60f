// `lrkc eval --show N`: N held-out examples with the model's predictions beside their targets.
// Predictions are teacher-forced, as the loss is: at each position the argmax of the logits given
// the true tokens before it, shown only where there is a target (a jsonl prompt's tokens and the
// padding have none). Token data is decoded with its tokenizer (arithmetic's alphabet, a Hugging
// Face tokenizer, or bytes); class data (two_moons) shows the predicted class beside the label.
import type { Tensor } from "../compiler/program.js";
import type { OpenedSource, Split } from "../runtime/data.js";
import type { Device } from "../runtime/device.js";
import type { Tokenizer } from "../runtime/tokenizer.js";
import { batchFeeds, type Run } from "../runtime/trainer.js";

export interface ShownExample {
  /** Token data: the input (up to its last target), targets and predictions, decoded. */
  input?: string;
  target: string;
  predicted: string;
  /** The ids (or classes) behind `target` and `predicted`. */
  targetIds: number[];
  predictedIds: number[];
}

function decoderOf(data: OpenedSource): (ids: number[]) => string {
  if (data.kind === "arithmetic") return (ids) => data.decode(ids);
  const tokenizer = (data as { tokenizer?: Tokenizer }).tokenizer;
  if (tokenizer) return (ids) => tokenizer.decode(ids);
  return (ids) => new TextDecoder().decode(new Uint8Array(ids));
}

/** Argmax of row `r` of [rows, vocab] logits. */
function argmax(logits: ArrayLike<number>, at: number, vocab: number): number {
  let best = 0;
  for (let v = 1; v < vocab; v++) if (logits[at + v]! > logits[at + best]!) best = v;
  return best;
}

/** Up to `count` examples of the eval split, with predictions; [] when the model has no predict. */
export async function showExamples(
  run: Run,
  device: Device,
  store: ReadonlyMap<string, Tensor>,
  count: number,
): Promise<ShownExample[]> {
  const { evalData: data, evalSplit: split } = run;
  const program = run.program.step;
  if (!program.predict) return [];
  const batchSize = run.program.batch;
  const size = split === "train" ? data.trainSize : data.validSize;
  const decode = decoderOf(data);
  const shown: ShownExample[] = [];
  for (let index = 0; shown.length < count && index * batchSize < size; index++) {
    // Only full batches fit the compiled shapes.
    if ((index + 1) * batchSize > size) break;
    const feeds = batchFeeds(run, store, split as Split, index, 0, 1, data, device.float64);
    const logits = (await device.run(program, program.predict, feeds)).get("logits")!;
    const vocab = Number(logits.shape[logits.shape.length - 1]);
    const target = feeds.get("batch.target") ?? feeds.get("batch.y");
    if (!target) return shown;
    const input = feeds.get("batch.input");
    const perRow = target.data.length / batchSize;
    for (let r = 0; r < batchSize && shown.length < count; r++) {
      const targetIds: number[] = [];
      const predictedIds: number[] = [];
      let last = -1;
      for (let t = 0; t < perRow; t++) {
        const want = target.data[r * perRow + t]!;
        if (want < 0) continue;
        targetIds.push(want);
        predictedIds.push(argmax(logits.data, (r * perRow + t) * vocab, vocab));
        last = t;
      }
      if (!input) {
        shown.push({
          target: targetIds.join(" "),
          predicted: predictedIds.join(" "),
          targetIds,
          predictedIds,
        });
        continue;
      }
      const inputIds = Array.from(input.data.subarray(r * perRow, r * perRow + last + 1));
      shown.push({
        input: decode(inputIds),
        target: decode(targetIds),
        predicted: decode(predictedIds),
        targetIds,
        predictedIds,
      });
    }
  }
  return shown;
}

/** The examples as the terminal shows them. */
export function formatShown(shown: readonly ShownExample[]): string {
  const q = (s: string) => JSON.stringify(s);
  return shown
    .map(
      (e, i) =>
        `example ${i + 1}\n` +
        (e.input !== undefined ? `  input:     ${q(e.input)}\n` : "") +
        `  target:    ${q(e.target)}\n  predicted: ${q(e.predicted)}\n`,
    )
    .join("");
}
