// The next-token sampler of `lrkc generate`, as a graph that runs where the model ran (WGSL
// kernels on WebGPU, the interpreter on the CPU): only the chosen token id comes back to the host,
// never the logits. From the logits [B, T, V] of the model's predict entry it takes row 0 at
// `position`, then
//
// - at temperature 0: the argmax (the lowest id on a tie);
// - else: z = logits / temperature, p = softmax(z); the nucleus is {v : p_v ≥ t}, t the largest
//   threshold whose tokens' probability reaches top_p, found by bisection (32 halvings of
//   [0, max p], a reduction over V each; no sort); and the token is argmax over the nucleus of
//   z + Gumbel noise, which is a draw from softmax(z) restricted to the nucleus (the Gumbel-max
//   trick: no cumulative sum needed). The noise is the IR's counter-based uniform, seeded by
//   (seed, draw): the same on every device, fresh for each draw.
import { Graph, type Op } from "./ir.js";
import type { GraphProgram, ProgramInput } from "./program.js";

export interface SamplerSettings {
  /** The model's logits shape [B, T, V]. */
  logits: readonly number[];
  temperature: number;
  topP: number;
  seed: number;
}

/** Bisection steps of the nucleus threshold: 2⁻³² of max p, below any f32 gap that matters. */
const HALVINGS = 32;

/** A one-entry program `sample`: inputs `logits`, `position` and `draw` (i32 [1]); output `token`. */
export function samplerProgram(settings: SamplerSettings): GraphProgram {
  const g = new Graph();
  const [B, T, V] = settings.logits as [number, number, number];
  const add = (op: Op, inputs: number[], shape: readonly number[], dtype: "f32" | "i32" = "f32") =>
    g.add(op, inputs, shape, dtype);
  const constant = (value: number, shape: readonly number[]) =>
    add({ kind: "const", value }, [], shape);
  const binary = (fn: "add" | "sub" | "mul" | "div" | "eq" | "ge", a: number, b: number) =>
    add({ kind: "binary", fn }, [a, b], g.shape(a), g.node(a).dtype);
  const unary = (fn: "exp" | "log" | "neg", a: number) =>
    add({ kind: "unary", fn }, [a], g.shape(a));
  const where = (c: number, a: number, b: number) => add({ kind: "where" }, [c, a, b], g.shape(a));
  const reduce = (fn: "sum" | "max", a: number, axes: number[]) =>
    add(
      { kind: "reduce", fn, axes },
      [a],
      g.shape(a).map((d, i) => (axes.includes(i) ? 1 : d)),
    );
  const expand = (a: number, shape: readonly number[]) => add({ kind: "expand" }, [a], shape);
  const row: [number, number] = [1, V];

  const inputs: ProgramInput[] = [];
  const input = (name: string, shape: number[], dtype: "f32" | "i32") => {
    const node = add({ kind: "input", role: "data", name }, [], shape, dtype);
    inputs.push({ name, node, role: "data", shape, dtype });
    return node;
  };
  const logits = input("logits", [B, T, V], "f32");
  const position = input("position", [1], "i32");
  const draw = input("draw", [1], "i32");

  // Row 0 at `position`: a mask over T, summed away (T·V work, no dynamic slice needed).
  const first = add(
    { kind: "reshape" },
    [add({ kind: "slice", starts: [0, 0, 0], steps: [1, 1, 1] }, [logits], [1, T, V])],
    [T, V],
  );
  const at = binary(
    "eq",
    add({ kind: "iota", axis: 0 }, [], [T, V], "i32"),
    expand(add({ kind: "reshape" }, [position], [1, 1], "i32"), [T, V]),
  );
  let score = reduce("sum", where(at, first, constant(0, [T, V])), [0]);

  if (settings.temperature > 0) {
    const z = binary("mul", score, constant(1 / settings.temperature, row));
    const e = unary("exp", binary("sub", z, expand(reduce("max", z, [1]), row)));
    const p = binary("div", e, expand(reduce("sum", e, [1]), row));
    // Gumbel noise from uniforms moved off 0: -log(-log(u)).
    const u = binary(
      "add",
      add({ kind: "random", dist: "uniform", seed: settings.seed >>> 0 }, [draw], row),
      constant(2 ** -25, row),
    );
    score = binary("add", z, unary("neg", unary("log", unary("neg", unary("log", u)))));
    if (settings.topP < 1) {
      const topP = constant(settings.topP, [1, 1]);
      let lo = constant(0, [1, 1]);
      let hi = reduce("max", p, [1]);
      for (let k = 0; k < HALVINGS; k++) {
        const mid = binary("mul", binary("add", lo, hi), constant(0.5, [1, 1]));
        const kept = where(binary("ge", p, expand(mid, row)), p, constant(0, row));
        const reaches = binary("ge", reduce("sum", kept, [1]), topP);
        [lo, hi] = [where(reaches, mid, lo), where(reaches, hi, mid)];
      }
      score = where(binary("ge", p, expand(lo, row)), score, constant(-3e38, row));
    }
  }

  // Argmax, the lowest id on a tie: the largest V − v among the maxima.
  const best = binary("eq", score, expand(reduce("max", score, [1]), row));
  const reversed = binary("sub", constant(V, row), add({ kind: "iota", axis: 1 }, [], row));
  const token = binary(
    "sub",
    constant(V, [1, 1]),
    reduce("max", where(best, reversed, constant(0, row)), [1]),
  );
  return {
    graph: g,
    inputs,
    entries: [{ name: "sample", outputs: [{ name: "token", node: token }] }],
  };
}
