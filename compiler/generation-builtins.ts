// The built-ins through which a model says how it generates one token at a time (spec §18.4,
// compiler/generation.ts): `token_positions(T)`, `causal_mask(T, S)` and `kv_cache(x, axis:)`. Outside
// `lrkc generate`'s cached program they lower exactly as `arange(T)`, `tril(ones(T, S))` and `x`
// do, so a training step's graph (and its kernels) is the same with them or without.
import { error } from "../language/diagnostics.js";
import { oneAxis } from "./axis-builtins.js";
import type { Call, Rule } from "./tensor-builtins.js";
import type { Value } from "./values.js";

/** `token_positions(T)`: i32[T], the positions of the T tokens being computed (0 … T-1 but in decode). */
function positions({ L, b, args, tensor }: Call): Value {
  const n = args.integer(0, undefined, undefined, 1);
  const iota = b.iota([n], 0, "i32");
  const gen = L.generation;
  if (gen) gen.used.positions++;
  if (gen?.position === undefined) return tensor(iota);
  return tensor(b.add(iota, b.broadcastTo(gen.position, [n])));
}

/**
 * `causal_mask(T, S)`: f32[T, S], 1 where key j may be attended by query i (j ≤ i's position),
 * else 0. Built as `tril(ones(T, S))` is, node for node, outside decode.
 */
function causalMask({ L, b, args, tensor }: Call): Value {
  const rows = args.integer(0, undefined, undefined, 1);
  const cols = args.integer(1, undefined, undefined, 1);
  const shape = [rows, cols];
  const ones = b.constant(1, shape);
  let row = b.iota(shape, 0, "i32");
  const col = b.iota(shape, 1, "i32");
  const position = L.generation?.position;
  if (position !== undefined) row = b.add(row, b.broadcastTo(b.reshape(position, [1, 1]), shape));
  const kept = b.cast(b.le(col, row), "f32");
  return tensor(b.mul(b.cast(ones, "f32"), kept));
}

/**
 * `kv_cache(x, axis:)`: `x`, whose `axis` runs over the tokens' positions, kept between tokens. In
 * prefill the cache is `x` itself (all C positions); in decode `x` is one position, written into
 * the cache at the token's position, and the whole cache (C positions along `axis`) is returned.
 */
function kvCache(c: Call): Value {
  const { L, b, at, args, tensor } = c;
  const x = args.tensor(0);
  const axis = oneAxis(c, x.shape.length, undefined);
  const gen = L.generation;
  if (!gen) return x;
  const path = L.modulePath();
  const n = gen.caches.filter((k) => k.module === path).length;
  const name = `cache:${path ? `${path}.` : ""}${n}`;
  const shape = x.shape.map((d, i) => (i === axis ? gen.capacity : d));
  const length = gen.position === undefined ? gen.capacity : 1;
  if (x.shape[axis] !== length)
    return L.r.report(
      error(
        "E0401",
        `\`kv_cache\` of ${L.typeText(x.node)}: its axis ${axis} must run over the ${length} position${length === 1 ? "" : "s"} being computed`,
        at,
        {
          help: "cache keys and values before they are repeated or reshaped, with `axis:` their positions' axis",
        },
      ),
    );
  let node = x.node;
  if (gen.position !== undefined) {
    const cache = gen.cacheInput(name, shape);
    const where = b.broadcastTo(
      b.reshape(
        gen.position,
        shape.map(() => 1),
      ),
      shape,
    );
    const here = b.eq(b.iota(shape, axis, "i32"), where);
    node = b.where(here, b.broadcastTo(x.node, shape), cache);
  }
  gen.caches.push({ name, module: path, shape, output: node });
  return tensor(node);
}

export const generationRules = {
  token_positions: positions,
  causal_mask: causalMask,
  kv_cache: kvCache,
} satisfies Record<string, Rule>;
