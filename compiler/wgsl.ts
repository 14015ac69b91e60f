// WGSL code generation shared by every kernel template: an emitter that writes the value of an IR
// node at an index as a sequence of `let` statements, reading materialized nodes from bindings
// and turning movement ops (reshape, permute, expand, slice, pad) and gather into index
// arithmetic; the helper functions the expressions call (erf, the counter-based random numbers,
// pow); literals; the bindings of the buffers an emitter reads; and the header comment every
// kernel opens with. The kernel around the emitted code is rendered by compiler/kernels/render.ts.
//
// Indices are i32. An Index knows its flat (row-major) offset, its coordinates, or both, and
// derives the other lazily, so a chain of same-shape elementwise ops reads `x[i]` directly and a
// reshape costs nothing while the flat offset is known.
import {
  numel,
  printGraph,
  strides,
  valueRange,
  type DType,
  type Graph,
  type Node,
  type Shape,
} from "./ir.js";
import type { KernelBuffer } from "./kernels/types.js";
import { dequantOperand, type PackedOperandCode } from "./kernels/dequant.js";

/**
 * The error flag of out-of-range gathers: a kernel that gathers with ids not known to be in range
 * writes [gather node + 1, the id] to it when an id is outside; renderKernel declares its binding
 * (after the others) and the device reads it after each run.
 */
export const GATHER_FLAG = "lrk_gather_flag";

// ---------------------------------------------------------------------------- literals

/** An f32 literal with the fewest digits that round to the same f32. */
export function f32Lit(v: number): string {
  if (Number.isNaN(v)) return "lrk_nan()";
  if (v === Infinity) return "lrk_inf()";
  if (v === -Infinity) return "(-lrk_inf())";
  const f = Math.fround(v);
  if (!Number.isFinite(f)) return f > 0 ? "lrk_inf()" : "(-lrk_inf())";
  let s = "";
  for (let p = 1; p <= 9; p++) {
    s = Math.abs(f).toPrecision(p);
    if (Math.fround(Number(s)) === Math.abs(f)) break;
  }
  if (!/[.e]/.test(s)) s += ".0";
  s = s.replace("e+", "e") + "f";
  return f < 0 || Object.is(f, -0) ? `(-${s})` : s;
}

export function i32Lit(v: number): string {
  v = v | 0;
  if (v === -2147483648) return "i32(-2147483647 - 1)";
  return v < 0 ? `(${v}i)` : `${v}i`;
}

export function lit(v: number, dtype: DType): string {
  return dtype === "i32" ? i32Lit(v) : f32Lit(v);
}

const isInt = (s: string) => /^-?\d+$/.test(s);
const intOf = (s: string) => Number(s);

/** a + b on i32 index expressions, folding literals. */
export function iadd(a: string, b: string): string {
  if (isInt(a) && isInt(b)) return String(intOf(a) + intOf(b));
  if (a === "0") return b;
  if (b === "0") return a;
  if (isInt(b) && intOf(b) < 0) return `(${a} - ${-intOf(b)})`;
  return `(${a} + ${b})`;
}

/** a · k on an i32 index expression and a number. */
export function imul(a: string, k: number): string {
  if (k === 0 || a === "0") return "0";
  if (k === 1) return a;
  if (isInt(a)) return String(intOf(a) * k);
  return `(${a} * ${k < 0 ? `(${k})` : k})`;
}

export function wgslType(dtype: DType): string {
  return dtype === "i32" ? "i32" : "f32";
}

// ---------------------------------------------------------------------------- helpers

/** WGSL helper functions, by name, with the helpers each one calls. */
const HELPERS: Record<string, { deps: string[]; code: string }> = {
  lrk_inf: {
    deps: [],
    code: `fn lrk_inf() -> f32 {
  var bits = 0x7f800000u;
  return bitcast<f32>(bits);
}`,
  },
  lrk_nan: {
    deps: [],
    code: `fn lrk_nan() -> f32 {
  var bits = 0x7fc00000u;
  return bitcast<f32>(bits);
}`,
  },
  lrk_hash: {
    deps: [],
    code: `// runtime/random.ts: hash32(seed, counter), bit-exact.
fn lrk_lowbias32(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}
fn lrk_hash(seed: u32, counter: u32) -> u32 {
  return lrk_lowbias32(lrk_lowbias32(counter ^ (seed * 0x9e3779b9u)) ^ seed ^ 0x5bd1e995u);
}`,
  },
  lrk_uniform: {
    deps: ["lrk_hash"],
    code: `fn lrk_uniform(seed: u32, i: u32) -> f32 {
  return f32(lrk_hash(seed, i) >> 8u) * 0x1p-24f;
}`,
  },
  lrk_normal: {
    deps: ["lrk_uniform"],
    code: `// cos(2πt) for t in [0, 1): quadrant reduction, then Taylor series on [-π/4, π/4].
fn lrk_cos2pi(t: f32) -> f32 {
  let q = round(4.0 * t);
  let x = 6.2831855 * (t - 0.25 * q);
  let x2 = x * x;
  let c = 1.0 + x2 * (-0.5 + x2 * (1.0 / 24.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 40320.0))));
  let s = x * (1.0 + x2 * (-1.0 / 6.0 + x2 * (1.0 / 120.0 + x2 * (-1.0 / 5040.0 + x2 * (1.0 / 362880.0)))));
  let k = u32(q) & 3u;
  return select(select(select(s, -c, k == 2u), -s, k == 1u), c, k == 0u);
}
// runtime/random.ts: normalAt(seed, i), Box–Muller; -ln(1 - u) by its series for small u.
fn lrk_normal(seed: u32, i: u32) -> f32 {
  let u1 = lrk_uniform(seed, 2u * i);
  let u2 = lrk_uniform(seed, 2u * i + 1u);
  var l = -log(1.0 - u1);
  if (u1 < 0.0625) {
    l = u1 * (1.0 + u1 * (0.5 + u1 * (1.0 / 3.0 + u1 * (0.25 + u1 * (0.2 + u1 * (1.0 / 6.0 + u1 / 7.0))))));
  }
  return sqrt(2.0 * l) * lrk_cos2pi(u2);
}`,
  },
  lrk_erfc: {
    deps: [],
    code: `// erfc with relative error < 1.2e-7 (Numerical Recipes' erfcc, Chebyshev fit).
fn lrk_erfc(x: f32) -> f32 {
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
    t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  let r = t * exp(-z * z + p);
  return select(2.0 - r, r, x >= 0.0);
}`,
  },
  lrk_erf: {
    deps: ["lrk_erfc"],
    code: `fn lrk_erf(x: f32) -> f32 {
  if (abs(x) < 0.5) {
    let x2 = x * x;
    return x * (1.1283791671 + x2 * (-0.3761263890 + x2 * (0.1128379167 + x2 * (-0.0268661707 +
      x2 * (0.0052239776 + x2 * (-0.0008548327 + x2 * 0.0001205533))))));
  }
  return 1.0 - lrk_erfc(x);
}`,
  },
  lrk_gelu: {
    deps: ["lrk_erfc"],
    code: `fn lrk_gelu(x: f32) -> f32 {
  return 0.5 * x * lrk_erfc(-x * 0.70710678118654752);
}`,
  },
  lrk_sigmoid: {
    deps: [],
    code: `fn lrk_sigmoid(x: f32) -> f32 {
  let e = exp(-abs(x));
  return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}`,
  },
  lrk_expm1: {
    deps: [],
    code: `// e^x - 1 without cancellation near 0 (Kahan's trick on exp and log).
fn lrk_expm1(x: f32) -> f32 {
  let u = exp(x);
  if (u == 1.0) {
    return x;
  }
  let um1 = u - 1.0;
  if (um1 == -1.0) {
    return -1.0;
  }
  if (abs(x) > 1.0) {
    return um1;
  }
  return um1 * x / log(u);
}`,
  },
  lrk_tanh: {
    deps: ["lrk_expm1"],
    code: `// tanh from expm1: accurate near 0, where tanh(x) = (e^2x - 1)/(e^2x + 1) is not.
fn lrk_tanh(x: f32) -> f32 {
  let e = lrk_expm1(2.0 * min(abs(x), 10.0));
  return sign(x) * (e / (e + 2.0));
}`,
  },
  lrk_pow: {
    deps: ["lrk_nan"],
    code: `// 32×32 → 64-bit product, as (high word, low word).
fn lrk_mul64(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let p00 = a0 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2<u32>(a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u), (mid << 16u) | (p00 & 0xffffu));
}
// Product of two numbers m·2^(e−63) with 64-bit mantissas m = (hi, lo), hi ≥ 2^31: the top 64
// bits of the 128-bit product (truncated: relative error < 2^-62).
fn lrk_xmul(x: vec3<u32>, y: vec3<u32>) -> vec3<u32> {
  let hh = lrk_mul64(x.x, y.x);
  let hl = lrk_mul64(x.x, y.y);
  let lh = lrk_mul64(x.y, y.x);
  let ll = lrk_mul64(x.y, y.y);
  var w1 = ll.x + hl.y;
  var c2 = select(0u, 1u, w1 < ll.x);
  let w1b = w1 + lh.y;
  c2 += select(0u, 1u, w1b < w1);
  w1 = w1b;
  var w2 = hh.y + hl.x;
  var c3 = select(0u, 1u, w2 < hh.y);
  var w2b = w2 + lh.x;
  c3 += select(0u, 1u, w2b < w2);
  w2 = w2b + c2;
  c3 += select(0u, 1u, w2 < w2b);
  let w3 = hh.x + c3;
  let e = bitcast<i32>(x.z) + bitcast<i32>(y.z);
  if ((w3 & 0x80000000u) != 0u) {
    return vec3<u32>(w3, w2, bitcast<u32>(e + 1));
  }
  return vec3<u32>((w3 << 1u) | (w2 >> 31u), (w2 << 1u) | (w1 >> 31u), bitcast<u32>(e));
}
// Math.pow. An integer exponent (|b| ≤ 2^24) is done by squaring with 64-bit mantissas in
// integer arithmetic, then rounded once to f32: the same f32 as the interpreter's f64 pow gives
// (so Adam's 1 − β^t matches it), where exp2(b·log2 a) is off by an ulp or more. A negative base
// needs an integer exponent.
fn lrk_pow(a: f32, b: f32) -> f32 {
  if (b == 0.0) {
    return 1.0;
  }
  let integer = floor(b) == b;
  if (a < 0.0 && !integer) {
    return lrk_nan();
  }
  var r = pow(abs(a), b);
  let bits = bitcast<u32>(abs(a));
  let biased = (bits >> 23u) & 0xffu;
  if (integer && abs(b) <= 16777216.0 && biased != 0u && biased != 0xffu) {
    var acc = vec3<u32>(0x80000000u, 0u, 0u);
    var base = vec3<u32>(((bits & 0x7fffffu) | 0x800000u) << 8u, 0u, bitcast<u32>(i32(biased) - 127));
    var k = u32(abs(b));
    loop {
      if ((k & 1u) == 1u) {
        acc = lrk_xmul(acc, base);
      }
      k = k >> 1u;
      if (k == 0u) {
        break;
      }
      base = lrk_xmul(base, base);
    }
    // round the 64-bit mantissa to 24 bits, to nearest, ties to even
    var m = acc.x >> 8u;
    let rest = acc.x & 0xffu;
    if (rest > 0x80u || (rest == 0x80u && (acc.y != 0u || (m & 1u) == 1u))) {
      m += 1u;
    }
    r = ldexp(f32(m), bitcast<i32>(acc.z) - 23);
    if (b < 0.0) {
      r = 1.0 / r;
    }
  }
  if (a < 0.0 && abs(b - 2.0 * floor(0.5 * b)) == 1.0) {
    return -r;
  }
  return r;
}`,
  },
  lrk_imod: {
    deps: [],
    code: `fn lrk_imod(a: i32, b: i32) -> i32 {
  if (b == 0i) {
    return 0i;
  }
  let r = a % b;
  return select(r, r + b, r != 0i && ((r < 0i) != (b < 0i)));
}`,
  },
};

/** The helpers a literal from `f32Lit` calls (`lrk_inf`, `lrk_nan`): none for a finite value. */
export function literalHelpers(text: string): string[] {
  return ["lrk_inf", "lrk_nan"].filter((name) => text.includes(`${name}()`));
}

/** The helpers' code, dependencies first. */
export function helperCode(names: Iterable<string>): string {
  const out: string[] = [];
  const done = new Set<string>();
  const add = (n: string) => {
    if (done.has(n)) return;
    done.add(n);
    for (const d of HELPERS[n]!.deps) add(d);
    out.push(HELPERS[n]!.code);
  };
  for (const n of [...names].sort()) add(n);
  return out.join("\n\n");
}

// ---------------------------------------------------------------------------- indices

/** `origin`'s coordinates for `shape` when the two shapes differ only in size-1 axes. */
function sameCoords(
  origin: { shape: Shape; coords: string[] },
  shape: Shape,
): string[] | undefined {
  const kept = origin.shape.flatMap((d, k) => (d === 1 ? [] : [{ d, c: origin.coords[k]! }]));
  const wanted = shape.filter((d) => d !== 1);
  if (kept.length !== wanted.length || kept.some((x, k) => x.d !== wanted[k])) return undefined;
  let next = 0;
  return shape.map((d) => (d === 1 ? "0" : kept[next++]!.c));
}

export class Index {
  private flatExpr?: string;
  private coordExprs?: string[];

  constructor(
    private readonly em: Emitter,
    readonly shape: Shape,
    at: { flat?: string; coords?: string[] },
  ) {
    this.flatExpr = at.flat;
    this.coordExprs = at.coords;
    if (shape.length === 0) this.flatExpr = "0";
    else if (at.flat !== undefined && at.coords !== undefined && !em.flatOrigins.has(at.flat))
      em.flatOrigins.set(at.flat, { shape, coords: at.coords });
  }

  flat(): string {
    if (this.flatExpr === undefined) {
      const st = strides(this.shape);
      let e = "0";
      this.coordExprs!.forEach((c, k) => {
        if (this.shape[k] !== 1) e = iadd(e, imul(c, st[k]!));
      });
      this.flatExpr = isInt(e) || /^[\w]+$/.test(e) ? e : this.em.let(e, "f");
      this.em.flatOrigins.set(this.flatExpr, { shape: this.shape, coords: this.coordExprs! });
    }
    return this.flatExpr;
  }

  coords(): string[] {
    if (this.coordExprs === undefined) {
      // A flat index made from coordinates of the same shape (size-1 axes aside) gives them back
      // without a division: a view read back through a permute or reshape of a matmul operand.
      const origin = this.em.flatOrigins.get(this.flat());
      if (origin) this.coordExprs = sameCoords(origin, this.shape);
    }
    if (this.coordExprs === undefined) {
      const f = this.flat();
      const st = strides(this.shape);
      this.coordExprs = this.shape.map((d, k) => {
        if (d === 1) return "0";
        if (isInt(f)) return String(Math.floor(intOf(f) / st[k]!) % d);
        let e = st[k] === 1 ? f : `(${f} / ${st[k]})`;
        if (k > 0) e = `(${e} % ${d})`;
        return e === f ? f : this.em.let(e, "c");
      });
    }
    return this.coordExprs;
  }

  /** For common-subexpression keys. */
  key(): string {
    return this.flatExpr !== undefined ? `f:${this.flatExpr}` : `c:${this.coordExprs!.join(",")}`;
  }
}

// ---------------------------------------------------------------------------- the emitter

export interface EmitterOptions {
  /** Whether a node is read from a buffer (materialized, and not computed by this kernel). */
  isBuffer: (node: number) => boolean;
  /**
   * The WGSL expression reading buffer node `node` at flat index `flat` (an i32 expression): the
   * kernel declares the binding (`BindingTable.load`).
   */
  load: (node: number, flat: string) => string;
  /** Nodes whose value is a WGSL expression already (a matmul's accumulator). */
  leaves?: Map<number, string>;
  /**
   * An i32 expression that is 0 at run time but unknown to the shader compiler, starting the loop
   * of an inlined matmul (so lavapipe does not unroll it whole): `i32(lrk_opaque_zero())`
   * (compiler/kernels/render.ts); default `0i`.
   */
  loopZero?: string;
}

/** Names a kernel's locals must not take: the scalar types whose constructors convert values. */
const WGSL_TYPE_NAMES = new Set(["f16", "f32", "i32", "u32"]);

export class Emitter {
  lines: string[] = [];
  readonly helpers = new Set<string>();
  /** Flat-index variables made from coordinates (`Index.flat`), with those coordinates. */
  readonly flatOrigins = new Map<string, { shape: Shape; coords: string[] }>();
  private cse = new Map<string, string>();
  private counter = 0;

  constructor(
    readonly graph: Graph,
    readonly options: EmitterOptions,
  ) {}

  fresh(prefix: string): string {
    let name = `${prefix}${this.counter++}`;
    // a local named like a WGSL type (`let f32 = …`) would shadow its conversion, `f32(x)`
    while (WGSL_TYPE_NAMES.has(name)) name = `${prefix}${this.counter++}`;
    return name;
  }

  /** `let <fresh> = expr;`, returning the name. */
  let(expr: string, prefix = "v"): string {
    const name = this.fresh(prefix);
    this.lines.push(`let ${name} = ${expr};`);
    return name;
  }

  index(shape: Shape, at: { flat?: string; coords?: string[] }): Index {
    return new Index(this, shape, at);
  }

  /** Runs `body` in a nested scope (a loop body): its statements and CSE entries stay inside. */
  scope(body: () => void): string[] {
    const saved = { lines: this.lines, cse: this.cse };
    this.lines = [];
    this.cse = new Map(this.cse);
    try {
      body();
      return this.lines;
    } finally {
      this.lines = saved.lines;
      this.cse = saved.cse;
    }
  }

  private helper(name: string): string {
    this.helpers.add(name);
    return name;
  }

  /** The value of `node` at `idx` (an index into the node's shape), as a WGSL expression. */
  value(id: number, idx: Index): string {
    const leaf = this.options.leaves?.get(id);
    if (leaf !== undefined) return leaf;
    const key = `${id}@${idx.key()}`;
    const known = this.cse.get(key);
    if (known) return known;
    const node = this.graph.node(id);
    const expr = this.options.isBuffer(id)
      ? this.options.load(id, idx.flat())
      : this.compute(node, idx);
    const name = node.op.kind === "const" ? expr : this.let(expr);
    this.cse.set(key, name);
    return name;
  }

  private compute(node: Node, idx: Index): string {
    const op = node.op;
    const g = this.graph;
    const int = node.dtype === "i32";
    const zero = int ? "0i" : "0.0";
    const at = (i: number) => this.value(node.inputs[i]!, idx);
    switch (op.kind) {
      case "input":
        throw new Error(`wgsl: input %${node.id} has no buffer`);
      case "const": {
        // ±inf and NaN (and values that round to ±inf in f32) are calls of helpers: a WGSL
        // const-expression may not be infinite or NaN.
        const text = lit(op.value, node.dtype);
        for (const helper of literalHelpers(text)) this.helper(helper);
        return text;
      }
      case "iota": {
        const c = idx.coords()[op.axis]!;
        return int ? c : `f32(${c})`;
      }
      case "random": {
        let seed = `${op.seed >>> 0}u`;
        if (node.inputs.length === 1) {
          const s = g.node(node.inputs[0]!);
          const v = this.value(s.id, this.index(s.shape, { flat: "0" }));
          const bits = s.dtype === "i32" ? `bitcast<u32>(${v})` : `bitcast<u32>(i32(${v}))`;
          seed = `lrk_hash(${seed}, ${bits})`;
          this.helper("lrk_hash");
        }
        const fn = this.helper(op.dist === "uniform" ? "lrk_uniform" : "lrk_normal");
        return `${fn}(${seed}, u32(${idx.flat()}))`;
      }
      case "unary":
        return int ? this.intUnary(op.fn, at(0)) : this.floatUnary(op.fn, at(0));
      case "binary":
        return this.binary(op.fn, at(0), at(1), int);
      case "where": {
        const cond = g.node(node.inputs[0]!);
        const c = this.value(cond.id, idx);
        return `select(${at(2)}, ${at(1)}, ${c} != ${cond.dtype === "i32" ? "0i" : "0.0"})`;
      }
      case "cast": {
        const x = at(0);
        return int ? `i32(${x})` : `f32(${x})`;
      }
      case "reshape": {
        const x = g.node(node.inputs[0]!);
        return this.value(x.id, this.index(x.shape, { flat: idx.flat() }));
      }
      case "permute": {
        const x = g.node(node.inputs[0]!);
        const c = idx.coords();
        const inC = new Array<string>(x.shape.length);
        op.perm.forEach((a, i) => (inC[a] = c[i]!));
        return this.value(x.id, this.index(x.shape, { coords: inC }));
      }
      case "expand": {
        const x = g.node(node.inputs[0]!);
        const c = idx.coords();
        return this.value(
          x.id,
          this.index(x.shape, { coords: x.shape.map((d, k) => (d === 1 ? "0" : c[k]!)) }),
        );
      }
      case "slice": {
        const x = g.node(node.inputs[0]!);
        const c = idx.coords();
        const inC = c.map((ck, k) => iadd(String(op.starts[k]!), imul(ck, op.steps[k]!)));
        return this.value(x.id, this.index(x.shape, { coords: inC }));
      }
      case "pad": {
        const x = g.node(node.inputs[0]!);
        const c = idx.coords();
        const conds: string[] = [];
        const inC = c.map((ck, k) => {
          const before = op.before[k]!;
          const after = node.shape[k]! - x.shape[k]! - before;
          const raw = iadd(ck, String(-before));
          if (before === 0 && after === 0) return raw;
          const r = this.let(raw, "p");
          conds.push(`${r} >= 0 && ${r} < ${x.shape[k]}`);
          return `clamp(${r}, 0, ${Math.max(0, x.shape[k]! - 1)})`;
        });
        const v = this.value(x.id, this.index(x.shape, { coords: inC }));
        return conds.length ? `select(${zero}, ${v}, ${conds.join(" && ")})` : v;
      }
      case "gather": {
        const table = g.node(node.inputs[0]!);
        const ids = g.node(node.inputs[1]!);
        const c = idx.coords();
        const s = ids.shape.length;
        const id = this.value(ids.id, this.index(ids.shape, { coords: c.slice(0, s) }));
        const rows = table.shape[0]!;
        const known = valueRange(g, ids.id);
        // Never a read outside the table: the row is clamped. Where the ids are not known to be
        // in range (they are for data fields and positions: compiler/lower.ts checks those), an
        // id outside also sets the error flag the device reads after the run (IndexOutOfRange).
        if (!known || known.min < 0 || known.max >= rows)
          this.lines.push(
            `if (${id} < 0i || ${id} >= ${rows}i) {`,
            `  ${GATHER_FLAG}[0] = ${node.id + 1}i;`,
            `  ${GATHER_FLAG}[1] = ${id};`,
            `}`,
          );
        const row = this.let(`clamp(${id}, 0, ${Math.max(0, rows - 1)})`, "r");
        return this.value(table.id, this.index(table.shape, { coords: [row, ...c.slice(s)] }));
      }
      case "matmul": {
        // A low-rank matmul (small inner dim) inlined into its reader: a short loop per element.
        const a = g.node(node.inputs[0]!);
        const b = g.node(node.inputs[1]!);
        const r = node.shape.length;
        const c = idx.coords();
        const batch = c.slice(0, r - 2);
        const [i, j] = [c[r - 2]!, c[r - 1]!];
        const inner = op.transA ? a.shape[r - 2]! : a.shape[r - 1]!;
        const acc = this.fresh("lr");
        const l = this.fresh("l");
        const body = this.scope(() => {
          const av = this.value(
            a.id,
            this.index(a.shape, { coords: [...batch, ...(op.transA ? [l, i] : [i, l])] }),
          );
          const bv = this.value(
            b.id,
            this.index(b.shape, { coords: [...batch, ...(op.transB ? [j, l] : [l, j])] }),
          );
          this.lines.push(`${acc} += ${av} * ${bv};`);
        });
        const start = this.options.loopZero ?? "0i";
        this.lines.push(
          `var ${acc} = ${zero}; // low-rank ${printGraph(g, new Set([node.id])).split("  //")[0]}`,
          `for (var ${l} = ${start}; ${l} < ${inner}i; ${l}++) {`,
          ...body.map((s) => `  ${s}`),
          `}`,
        );
        return acc;
      }
      default:
        throw new Error(`wgsl: %${node.id} (${op.kind}) is not an expression`);
    }
  }

  private floatUnary(fn: string, x: string): string {
    switch (fn) {
      case "neg":
        return `-${x}`;
      case "exp":
      case "log":
      case "sqrt":
      case "abs":
      case "sign":
      case "floor":
      case "sin":
      case "cos":
        return `${fn}(${x})`;
      case "rsqrt":
        return `1.0 / sqrt(${x})`;
      case "tanh":
        return `${this.helper("lrk_tanh")}(${x})`;
      case "sigmoid":
        return `${this.helper("lrk_sigmoid")}(${x})`;
      case "silu":
        return `${x} * ${this.helper("lrk_sigmoid")}(${x})`;
      case "relu":
        return `select(0.0, ${x}, ${x} > 0.0)`;
      case "gelu":
        return `${this.helper("lrk_gelu")}(${x})`;
      case "erf":
        return `${this.helper("lrk_erf")}(${x})`;
      case "recip":
        return `1.0 / ${x}`;
      case "square":
        return `${x} * ${x}`;
      case "not":
        return `select(0.0, 1.0, ${x} == 0.0)`;
    }
    throw new Error(`wgsl: unary ${fn}`);
  }

  private intUnary(fn: string, x: string): string {
    switch (fn) {
      case "neg":
        return `-${x}`;
      case "abs":
      case "sign":
        return `${fn}(${x})`;
      case "floor":
        return x;
      case "relu":
        return `max(${x}, 0i)`;
      case "square":
        return `${x} * ${x}`;
      case "not":
        return `select(0i, 1i, ${x} == 0i)`;
    }
    return `i32(${this.floatUnary(fn, `f32(${x})`)})`;
  }

  private binary(fn: string, a: string, b: string, int: boolean): string {
    const one = int ? "1i" : "1.0";
    const zero = int ? "0i" : "0.0";
    const cmp = (o: string) => `select(${zero}, ${one}, ${a} ${o} ${b})`;
    switch (fn) {
      case "add":
        return `${a} + ${b}`;
      case "sub":
        return `${a} - ${b}`;
      case "mul":
        return `${a} * ${b}`;
      case "div":
        return int ? `select(${a} / ${b}, 0i, ${b} == 0i)` : `${a} / ${b}`;
      case "pow":
        return int
          ? `i32(${this.helper("lrk_pow")}(f32(${a}), f32(${b})))`
          : `${this.helper("lrk_pow")}(${a}, ${b})`;
      case "max":
        return `select(${b}, ${a}, ${a} >= ${b})`;
      case "min":
        return `select(${b}, ${a}, ${a} <= ${b})`;
      case "lt":
        return cmp("<");
      case "le":
        return cmp("<=");
      case "gt":
        return cmp(">");
      case "ge":
        return cmp(">=");
      case "eq":
        return cmp("==");
      case "ne":
        return cmp("!=");
      case "and":
        return `select(${zero}, ${one}, ${a} != ${zero} && ${b} != ${zero})`;
      case "or":
        return `select(${zero}, ${one}, ${a} != ${zero} || ${b} != ${zero})`;
      case "mod":
        return int ? `${this.helper("lrk_imod")}(${a}, ${b})` : `${a} - ${b} * floor(${a} / ${b})`;
    }
    throw new Error(`wgsl: binary ${fn}`);
  }
}

// ---------------------------------------------------------------------------- bindings

/** The read bindings of the buffers an emitter asks for, in the order it asks. */
/**
 * Which buffer nodes are stored packed, and with how many bits per element: integer values in
 * 2-, 4- or 8-bit two's complement fields of u32 words, element i in word i / (32 / bits) from
 * the low bits up (`packedBits` in compiler/program.ts); or 16: f16 floats (`shader-f16`), each
 * converted to f32 as it is loaded (`storedWidth`).
 */
export type PackedOf = (node: number) => number | undefined;

/** The function converting an f16 element to f32 (declared by renderKernel where needed). */
export const HALF_LOAD = "lrk_half";

export class BindingTable {
  readonly entries: {
    node: number;
    name: string;
    buffer: number;
    dtype: DType;
    packed?: number;
  }[] = [];
  private byBuffer = new Map<string, string>();

  constructor(
    private readonly graph: Graph,
    private readonly bufferOf: (node: number) => number,
    private readonly prefix = "in",
    private readonly packedOf: PackedOf = () => undefined,
  ) {}

  /**
   * A name the template declares already (`mm_a`): the next f32 buffer asked for that has no name
   * yet takes it instead of a new binding; `claimed` then tells which buffer it got.
   */
  claim?: { name: string; buffer?: number };

  name(node: number): string {
    const buffer = this.bufferOf(node);
    const dtype = this.graph.node(node).dtype;
    const packed = this.packedOf(node);
    const key = `${buffer}:${packed ? `u${packed}` : dtype}`;
    const known = this.byBuffer.get(key);
    if (known) return known;
    if (this.claim && this.claim.buffer === undefined && dtype === "f32" && !packed) {
      this.claim.buffer = buffer;
      this.byBuffer.set(key, this.claim.name);
      return this.claim.name;
    }
    const name = `${this.prefix}${this.entries.length}`;
    this.byBuffer.set(key, name);
    this.entries.push({ node, name, buffer, dtype, ...(packed ? { packed } : {}) });
    return name;
  }

  /** Reads of `node`'s buffer (as its dtype) go through the kernel's own binding `name`. */
  alias(node: number, name: string): void {
    this.byBuffer.set(`${this.bufferOf(node)}:${this.graph.node(node).dtype}`, name);
  }

  /** Buffer node `node` at flat index `flat` (i32), unpacked to its dtype where it is packed. */
  load(node: number, flat: string): string {
    const array = this.name(node);
    const bits = this.packedOf(node);
    if (!bits) return `${array}[${flat}]`;
    // a module-scope function (compiler/kernels/render.ts): an emitter's local may be named `f32`
    if (bits === 16) return `${HALF_LOAD}(${array}[${flat}])`;
    const perWord = 32 / bits;
    const word = `${array}[u32(${flat}) / ${perWord}u]`;
    const field = `extractBits(bitcast<i32>(${word}), (u32(${flat}) % ${perWord}u) * ${bits}u, ${bits}u)`;
    return this.graph.node(node).dtype === "i32" ? field : `f32(${field})`;
  }

  /** The bindings, after the template's own (renderKernel numbers them). */
  buffers(): KernelBuffer[] {
    return this.entries.map((e) => {
      const name = this.graph.node(e.node).name;
      return {
        buffer: e.buffer,
        access: "read" as const,
        name: e.name,
        type: e.packed === 16 ? "f16" : e.packed ? "u32" : wgslType(e.dtype),
        note:
          `%${e.node}${name ? ` ${name}` : ""}` +
          (e.packed === 16 ? " (f16)" : e.packed ? ` (packed, ${e.packed} bits)` : ""),
      };
    });
  }
}

/** The read_write bindings `out0`, `out1`, … (or `name` for one) of the nodes a kernel writes. */
export function outputBuffers(
  graph: Graph,
  outputs: readonly number[],
  bufferOf: (node: number) => number,
  name?: string,
): KernelBuffer[] {
  return outputs.map((id, j) => ({
    buffer: bufferOf(id),
    access: "read_write" as const,
    name: name ?? `out${j}`,
    type: wgslType(graph.node(id).dtype),
    note: `%${id}`,
  }));
}

// ---------------------------------------------------------------------------- comments

/**
 * Source lines found before, per graph and node list: a plan asks for a kernel group's twice (its
 * WGSL header and the plan's `sourceLines`).
 */
const sourceLinesOf = new WeakMap<Graph, WeakMap<readonly number[], readonly string[]>>();

/** The `.lrk` lines the nodes came from (`file:line`), in order of first appearance. */
export function sourceLines(graph: Graph, nodes: readonly number[]): string[] {
  let known = sourceLinesOf.get(graph);
  if (!known) sourceLinesOf.set(graph, (known = new WeakMap()));
  const lines = known.get(nodes);
  if (lines) return [...lines];
  const out = new Set<string>();
  for (const id of nodes) {
    const s = graph.node(id).source;
    if (s) out.add(`${s.file}:${s.line}`);
  }
  const found = [...out];
  known.set(nodes, found);
  return [...found];
}

/** The comment a kernel opens with: its title, the IR nodes it computes, their source lines. */
export function header(graph: Graph, title: string, nodes: readonly number[]): string {
  const lines = [`// ${title}`, "// computes:"];
  const printed = printGraph(graph, new Set(nodes)).split("\n");
  for (const l of printed) lines.push(`//   ${l}`);
  const src = sourceLines(graph, nodes);
  if (src.length) lines.push(`// from: ${src.join(", ")}`);
  return lines.join("\n");
}

/** Workgroups for `groups` invocation groups, split over x and y when x would exceed 65535. */
export function grid(groups: number): [number, number, number] {
  if (groups <= 65535) return [Math.max(1, groups), 1, 1];
  const y = Math.ceil(groups / 65535);
  return [Math.ceil(groups / y), y, 1];
}

export function shapeText(dtype: DType, shape: Shape): string {
  return `${dtype}[${shape.join(", ")}]`;
}

export { numel };

// ---------------------------------------------------------------------------- matmul epilogues

/**
 * The code fused around a matmul kernel. The epilogue: a WGSL function of the accumulator and the
 * output element computing the chain of fused nodes after the matmul (low-rank matmuls in it are
 * short loops). Prologues: an operand that has no buffer (`prologue.a` / `.b`: the operand node,
 * an elementwise expression) is computed at each load, as a function of its flat index. Other
 * operands of these come through extra bindings (`epilogue.bindings`, which the matmul kernel
 * declares after its own three); a prologue's first f32 buffer is bound as the template's own
 * `mm_a` / `mm_b` (`operandBuffers` says which).
 */
export function matmulFusionCode(
  graph: Graph,
  anchor: number,
  chain: readonly number[],
  isBuffer: (node: number) => boolean,
  bufferOf: (node: number) => number,
  /**
   * Where the extra bindings start (the template's 3). Unused: renderKernel numbers bindings in
   * order; kept so that callers need not change.
   */
  _firstBinding: number,
  /** The chain's first node sums the batch that the kernel folded into k: its value is acc too. */
  foldBatch = false,
  prologue: { a?: number; b?: number } = {},
  packedOf: PackedOf = () => undefined,
  /** Low-rank branches of the chain the template's tile computes: their values are `lr0`, …. */
  tileBranches: readonly number[] = [],
): {
  epilogue: {
    expression: string;
    declarations: string;
    bindings: KernelBuffer[];
  };
  /** `dequantB`: B is a dequantized packed weight, which the template may read word by word. */
  prologue: { a?: string; b?: string; dequantB?: PackedOperandCode };
  /** The buffer each prologue's operand binding (0 for A, 1 for B) holds. */
  operandBuffers: { a?: number; b?: number };
} {
  const mm = graph.node(anchor);
  const r = mm.shape.length;
  const [m, n] = [mm.shape[r - 2]!, mm.shape[r - 1]!];
  const inChain = new Set(chain);
  const table = new BindingTable(graph, bufferOf, "ep", packedOf);
  const helpers = new Set<string>();
  const functions: string[] = [];
  const out: { a?: string; b?: string; dequantB?: PackedOperandCode } = {};
  const operandBuffers: { a?: number; b?: number } = {};
  for (const side of ["a", "b"] as const) {
    const node = prologue[side];
    if (node === undefined) continue;
    const em = new Emitter(graph, {
      isBuffer: (id) => id !== node && isBuffer(id),
      load: (id, f) => table.load(id, f),
      loopZero: "i32(lrk_opaque_zero())",
    });
    table.claim = { name: `mm_${side}` };
    const target = graph.node(node);
    const body = em.scope(() => {
      em.lines.push(`let f = i32(i);`);
      em.lines.push(`return ${em.value(node, em.index(target.shape, { flat: "f" }))};`);
    });
    operandBuffers[side] = table.claim.buffer;
    table.claim = undefined;
    for (const h of em.helpers) helpers.add(h);
    functions.push(
      `// prologue: operand ${side.toUpperCase()} = %${node}, computed at each load`,
      `fn lrk_prologue_${side}(i: u32) -> f32 {`,
      ...body.map((l) => `  ${l}`),
      `}`,
    );
    out[side] = `lrk_prologue_${side}(i)`;
    const dq = side === "b" ? dequantOperand(graph, node, isBuffer, packedOf) : undefined;
    // the names the prologue's loads gave the values and scales (BindingTable keeps one per buffer)
    if (dq)
      out.dequantB = {
        values: table.name(dq.values),
        scales: table.name(dq.scales),
        bits: dq.bits,
        group: dq.group,
      };
  }
  let expression = "acc";
  const lrs = tileBranches.map((_, i) => `lr${i}`);
  if (chain.length) {
    const em = new Emitter(graph, {
      isBuffer: (id) => id !== anchor && !inChain.has(id) && isBuffer(id),
      load: (id, f) => table.load(id, f),
      leaves: new Map([
        [anchor, "acc"],
        ...(foldBatch ? [[chain[0]!, "acc"] as const] : []),
        ...tileBranches.map((id, i) => [id, `lr${i}`] as const),
      ]),
      loopZero: "i32(lrk_opaque_zero())",
    });
    const last = graph.node(chain[chain.length - 1]!);
    const body = em.scope(() => {
      em.lines.push(`let f = i32((batch * ${m}u + row) * ${n}u + col);`);
      em.lines.push(`return ${em.value(last.id, em.index(last.shape, { flat: "f" }))};`);
    });
    for (const h of em.helpers) helpers.add(h);
    functions.push(
      `// epilogue: ${chain.map((c) => `%${c}`).join(", ")}`,
      `fn lrk_epilogue(acc: f32, batch: u32, row: u32, col: u32${lrs.map((l) => `, ${l}: f32`).join("")}) -> f32 {`,
      ...body.map((l) => `  ${l}`),
      `}`,
    );
    expression = `lrk_epilogue(acc, batch, row, col${lrs.map((l) => `, ${l}`).join("")})`;
  }
  const declarations = [helperCode(helpers), ...functions].filter((s) => s !== "").join("\n");
  return {
    epilogue: { expression, declarations, bindings: table.buffers() },
    prologue: out,
    operandBuffers,
  };
}
