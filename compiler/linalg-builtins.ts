// Built-ins for frozen tensors that adapters compute once (spec §8.10): `svd` (the truncated SVD
// with its singular values), `qr` (the thin QR), and seeded random tensors as values (`normal`,
// `uniform` given a shape). Each is lowered to IR ops the CPU interpreter and the WebGPU kernels
// both run: the SVD to the `svd` op (randomized subspace iteration) and two products, the QR to
// the `qr` op (Householder) and one product.
import { error } from "../language/diagnostics.js";
import { shapeText } from "./lower.js";
import { MAX_PANEL } from "./kernels/special.js";
import type { Call } from "./tensor-builtins.js";
import type { Value } from "./values.js";

/**
 * `svd(x, rank)` → (U [m, r], S [r], Vh [r, n]) with x ≈ U diag(S) Vh, S descending (as
 * torch.linalg.svd's, truncated). U comes from the `svd` op; P = Uᵀ x [r, n] has rows S_i · Vh_i,
 * so S_i = ‖P_i‖ and Vh_i = P_i / S_i: exact whenever U is. `iterations:` and `oversample:` set the
 * randomized method's accuracy (as `svd_left`'s); `exact: true` takes the whole column space
 * (rank + oversample = min(m, n), no iteration needed), which is the exact truncated SVD up to
 * rounding, for matrices with min(m, n) up to MAX_PANEL.
 */
export function svdTuple({ L, b, at, args, tensor }: Call): Value {
  const x = args.tensor(0);
  const rank = args.integer(1, "rank", undefined, 1);
  const exact = args.bool("exact", false);
  const iterations = args.integer(-1, "iterations", 2, 0);
  const oversample = args.integer(-1, "oversample", 4, 0);
  args.done();
  if (x.shape.length !== 2)
    L.fail(at, `\`svd\` needs a matrix, found ${shapeText(x.shape, x.dtype)}`);
  const [m, n] = x.shape as [number, number];
  const full = Math.min(m, n);
  if (rank > full)
    L.fail(
      args.argAt(1, "rank"),
      `\`svd\`'s rank ${rank} is larger than min(rows, cols) = ${full}`,
    );
  if (iterations > 1000)
    L.r.report(
      error(
        "E0402",
        `\`iterations\` must be at most 1000, not ${iterations}`,
        args.argAt(-1, "iterations"),
      ),
    );
  if (exact && full > MAX_PANEL)
    L.fail(
      args.argAt(-1, "exact"),
      `\`svd\`'s exact mode takes matrices with min(rows, cols) up to ${MAX_PANEL}, not ${full}`,
      {
        help: "use the randomized method: `iterations: 16` is accurate unless the spectrum is flat",
      },
    );
  const columns = exact ? full : Math.min(rank + oversample, full);
  if (columns > MAX_PANEL)
    L.fail(
      args.argAt(-1, "oversample"),
      `\`svd\` takes at most ${MAX_PANEL} columns (rank + oversample), not ${columns}`,
    );
  const u = b.svd(x.node, "left", rank, {
    iterations: exact ? 0 : iterations,
    oversample: columns - rank,
    seed: L.nextSeed(),
  });
  const p = b.matmul(u, x.node, { transA: true }); // [r, n]
  const s = b.sqrt(b.sum(b.mul(p, p), [1])); // [r]
  // A zero singular value (x of rank < r) has P_i = 0: its Vh row is 0, not NaN.
  const vh = b.div(p, b.maximum(b.reshape(s, [rank, 1]), b.constant(1e-30)));
  return { kind: "tuple", items: [tensor(u), tensor(s), tensor(vh)] };
}

/**
 * `qr(x)` → (Q [m, k], R [k, n]), k = min(m, n): the thin QR of torch.linalg.qr(mode="reduced"),
 * with LAPACK's Householder signs (R's diagonal is -sign(x_kk) · ‖column‖ after the earlier
 * reflections). Q comes from the `qr` op on x's first k columns (those determine it), and
 * R = triu(Qᵀ x), exactly upper triangular.
 */
export function qrTuple({ L, b, at, args, tensor }: Call): Value {
  const x = args.tensor(0);
  args.done();
  if (x.shape.length !== 2)
    L.fail(at, `\`qr\` needs a matrix, found ${shapeText(x.shape, x.dtype)}`);
  const [m, n] = x.shape as [number, number];
  const k = Math.min(m, n);
  if (k > MAX_PANEL)
    L.fail(at, `\`qr\` takes matrices with min(rows, cols) up to ${MAX_PANEL}, not ${k}`, {
      help: "for a low-rank factor, take the QR of the columns you need: `qr(x[:, 0:r])`",
    });
  const panel = n > k ? b.slice(x.node, [0, 0], [m, k]) : x.node;
  const q = b.qr(panel);
  const full = b.matmul(q, x.node, { transA: true }); // [k, n]
  const upper = b.ge(b.iota([k, n], 1), b.iota([k, n], 0));
  const r = b.mul(full, b.cast(upper, "f32"));
  return { kind: "tuple", items: [tensor(q), tensor(r)] };
}

/**
 * `normal(shape, seed:, std: 1, mean: 0)` and `uniform(shape, lo, hi, seed:)` as values: a fixed
 * random tensor, the same on every device (the counter-based generator) and in every run, since it
 * depends on `seed` alone (as PEFT's `projection_prng_key`: the train block's seed does not change
 * it). Equal seeds give equal numbers: tensors meant to be independent need different seeds.
 * `key:` (a scalar, such as `step`) mixes a value known only at run time into the seed.
 */
export function seededRandom(dist: "normal" | "uniform") {
  return ({ L, b, at, args, tensor }: Call): Value => {
    const shapeArg = args.get(0);
    // `normal(std: 0.02)` outside a `param`'s whole initializer: no shape, so no value to make.
    if (shapeArg?.kind !== "list" && shapeArg?.kind !== "tuple")
      return L.r.report(
        error("E0206", `\`${dist}\` is not available here`, at, {
          help: `random initializers fill a model's or adapter's \`param\` (\`param w: f32[n] = ${dist}(${dist === "normal" ? "std: 0.02" : "-0.1, 0.1"})\`); an optimizer's or budget's \`state\` starts from a tensor expression such as \`zeros_like(param)\`; a fixed random tensor needs a shape and a seed: \`${dist}([rows, cols], seed: 0)\``,
        }),
      );
    const items = shapeArg.items;
    const shape = items.map((d) => (d.kind === "number" ? d.value : NaN));
    if (items.length === 0 || shape.some((d) => !Number.isInteger(d) || d < 1))
      L.fail(
        args.argAt(0),
        `\`${dist}\` as a value needs a shape, a list of positive integers such as \`[rank, in]\``,
        {
          help: `as a \`param\`'s initializer, write \`${dist}(${dist === "normal" ? "std: 0.02" : "lo, hi"})\` alone`,
        },
      );
    args.need(-1, "seed"); // a fixed tensor needs its seed said: `seed: 0`
    const seed = args.integer(-1, "seed", undefined, 0);
    // `key: step` gives new numbers at every step: the seed becomes hash32(seed, key).
    const keyArg = args.get(-1, "key");
    let key: number | undefined;
    if (keyArg !== undefined) {
      key = args.tensor(-1, "key").node;
      if (b.shape(key).length !== 0)
        L.fail(
          args.argAt(-1, "key"),
          `\`${dist}\`'s key must be one number, found ${L.typeText(key)}`,
        );
    }
    const u = b.random(dist, shape, seed >>> 0, key);
    if (dist === "normal") {
      const std = args.number(-1, "std", 1);
      const mean = args.number(-1, "mean", 0);
      args.done();
      return tensor(b.add(b.mul(u, b.constant(std)), b.constant(mean)));
    }
    const lo = args.number(1, "lo", 0);
    const hi = args.number(2, "hi", 1);
    args.done();
    return tensor(b.add(b.mul(u, b.constant(hi - lo)), b.constant(lo)));
  };
}
