// `lrkc generate`'s program with a KV cache (spec §18.4). The model's forward is lowered twice more
// into one graph, dropout off, with the adapters and quantizers of the step in place:
//
//   - `prefill`: `prefill.ids` i32[1, C] (the prompt, padded) at positions 0 … C-1; its outputs
//     are the logits [1, C, V] and every cache;
//   - `decode`: one token, `decode.ids` i32[1, 1], at position `position` (i32[1]); it reads each
//     cache (inputs `cache:…`), writes the token's row into it, and outputs the logits [1, 1, V]
//     and the caches.
//
// C, the capacity, is the data's context (the predict entry's T). Where the caches go is the
// model's to say: `kv_cache(x, axis: a)` in a module's forward names a tensor whose axis `a`
// runs over positions (attention's keys and values, std.nn and std.models). While this program is
// lowered, it returns the whole cache (C rows along `a`, the token's row written at its position),
// `token_positions(T)` the tokens' positions and `causal_mask(T, S)` the mask of keys at or before each
// token's position; elsewhere they are the identity, `arange(T)` and `tril(ones(T, S))`, so the
// training step's graph is unchanged. Decode's work per token is then independent of the prefix:
// every matmul but attention's is one row, and attention reads C cached rows.
//
// A model whose forward has no `kv_cache`, or that computes positions without `token_positions` or masks
// with `tril`/`triu` in place of `causal_mask`, would be wrong one token at a time: no program is
// made for it (undefined), and `lrkc generate` recomputes the prefix for every token instead.
import type { Location } from "../language/diagnostics.js";
import type { Entry, GenerationProgram } from "./program.js";
import type { Placement } from "./place.js";
import type { Resolver } from "./resolve.js";
import { stepContext } from "./step.js";
import type { TrainSpec } from "./train.js";
import type { ValueRange } from "./ir.js";
import type { Value } from "./values.js";

/** What the generation builtins (compiler/generation-builtins.ts) read and record while lowering. */
export interface GenerationLowering {
  /** Positions the caches hold (C). */
  capacity: number;
  /** The i32[1] input holding the token's position (decode); undefined in prefill (position 0). */
  position?: number;
  /** Caches made so far in this lowering, in order: `cache:<module path>.<n>`. */
  caches: { name: string; shape: number[]; output: number }[];
  /** The graph input holding cache `name` (decode), made on first use. */
  cacheInput(name: string, shape: number[]): number;
  /** Calls that make a cached program right or wrong. */
  used: { positions: number; triangles: number };
}

/** Why no cached program was made, for `lrkc generate`'s note; or the program. */
export type GenerationResult = GenerationProgram | { reason: string };

export function buildGeneration(
  r: Resolver,
  spec: TrainSpec,
  placement: Placement,
  buffers: ReadonlyMap<string, Value>,
  input: { capacity: number; range?: ValueRange },
  at: Location,
): GenerationResult | undefined {
  const ctx = stepContext(r, spec, placement, buffers);
  const { L, b } = ctx;
  const C = input.capacity;
  const lower = (ids: string, T: number, position?: number) => {
    const gen: GenerationLowering = {
      capacity: C,
      ...(position !== undefined ? { position } : {}),
      caches: [],
      cacheInput: (name, shape) => ctx.input(name, "data", shape),
      used: { positions: 0, triangles: 0 },
    };
    const node = ctx.input(ids, "data", [1, T], "i32", input.range);
    L.generation = gen;
    L.training = false;
    try {
      const logits = r.attempt(() => L.forward(spec.model, [{ value: L.tensor(node), at }], at));
      return { gen, logits: logits?.kind === "tensor" ? logits.node : undefined };
    } finally {
      L.generation = undefined;
      L.training = true;
    }
  };
  const prefill = lower("prefill.ids", C);
  const position = ctx.input("position", "data", [1], "i32", {
    min: 0,
    max: C - 1,
    what: `the positions go up to ${C - 1}`,
  });
  const decode = lower("decode.ids", 1, position);
  if (ctx.failed() || prefill.logits === undefined || decode.logits === undefined) return undefined;
  const { gen } = decode;
  if (gen.caches.length === 0)
    return { reason: "the model's forward keeps no `kv_cache` (std.models' GPT2 and Llama do)" };
  if (gen.used.positions === 0 || gen.used.triangles > 0)
    return {
      reason:
        "the model computes positions without `token_positions(T)` or masks with `tril`/`triu`: one token at a time it would be wrong",
    };
  const entry = (name: string, logits: number, caches: GenerationLowering["caches"]): Entry => ({
    name,
    outputs: [
      { name: "logits", node: logits },
      ...caches.map((c) => ({ name: c.name, node: c.output })),
    ],
  });
  return {
    graph: b.graph,
    inputs: [...ctx.inputs.values()],
    entries: [
      entry("prefill", prefill.logits, prefill.gen.caches),
      entry("decode", decode.logits, gen.caches),
    ],
    capacity: C,
    caches: gen.caches.map((c) => ({ name: c.name, shape: c.shape })),
  };
}
