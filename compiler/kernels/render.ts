// The one kernel skeleton. Every template (map, reduce, row, contraction, matmul, the special
// kernels) describes its storage bindings, module-scope declarations, entry-point builtins and
// body; `renderKernel` writes the WGSL module and the KernelSource around it. Binding numbers,
// the uniform params binding, the opaque zero and the entry point's signature are decided here
// and nowhere else, so a template cannot get them out of step with its `bindings`.
//
// Also here, the two pieces of WGSL several templates share: the opaque zero (`lrk_zero`) and
// the tree reduction over workgroup memory (`workgroupReduce`).
import { GATHER_FLAG, HALF_LOAD, helperCode, literalHelpers } from "../wgsl.js";
import type { BufferChunk } from "../memory-plan.js";
import type { KernelBinding, KernelBuffer, ParamKernelSource } from "./types.js";

/** The entry point's builtin inputs a template may ask for. */
export type Builtin =
  | "global_invocation_id"
  | "local_invocation_id"
  | "local_invocation_index"
  | "workgroup_id"
  | "subgroup_invocation_id"
  | "subgroup_size";

const BUILTIN_TYPE: Record<Builtin, string> = {
  global_invocation_id: "vec3<u32>",
  local_invocation_id: "vec3<u32>",
  local_invocation_index: "u32",
  workgroup_id: "vec3<u32>",
  subgroup_invocation_id: "u32",
  subgroup_size: "u32",
};

export interface KernelSpec {
  /** A short human name: `matmul 64x64x64 (subgroup 2x32)`, `map f32[32, 512] %7`. */
  name: string;
  /** Comment lines the module opens with (`header` in compiler/wgsl.ts, and a line or two more). */
  header?: string;
  /** Module directives (`enable subgroups;`): WGSL wants them before any declaration. */
  directives?: readonly string[];
  /**
   * Storage bindings of group 0, numbered 0, 1, … in this order. A plain `KernelBinding` (no
   * name: a hand-written matmul epilogue's) takes its number but is declared in `declarations`.
   */
  buffers: readonly (KernelBuffer | KernelBinding)[];
  /**
   * u32 sizes the shader reads at run time (one shader serves every size): they become the
   * kernel's `params`, a uniform the executor binds after the storage bindings, and `main` opens
   * with `let NAME = dims.vI;` for each.
   */
  uniforms?: readonly { name: string; value: number }[];
  /** Module-scope declarations after the bindings: workgroup memory, helper functions. */
  declarations?: readonly string[];
  workgroupSize: number | readonly [number, number, number];
  /** `main`'s parameters, WGSL name → builtin, in this order. */
  builtins: Readonly<Record<string, Builtin>>;
  /** `main`'s statements, without the function's indentation. */
  body: readonly string[];
  dispatch: [number, number, number];
  /** Device features the WGSL needs (`subgroups`). */
  features?: readonly string[];
}

const declared = (b: KernelBuffer | KernelBinding): b is KernelBuffer => "name" in b;

/** What renderKernel looks for in a piece of code: the helpers and bindings it uses. */
interface CodeFacts {
  /** Calls `lrk_inf()` / `lrk_nan()`. */
  inf: boolean;
  nan: boolean;
  /** Declares `fn lrk_inf(` / `fn lrk_nan(` itself. */
  declaresInf: boolean;
  declaresNan: boolean;
  gatherFlag: boolean;
  opaqueZero: boolean;
}

function codeFacts(text: string): CodeFacts {
  const [inf, nan] = ["lrk_inf", "lrk_nan"].map((name) => literalHelpers(text).includes(name));
  return {
    inf: inf!,
    nan: nan!,
    declaresInf: text.includes("fn lrk_inf("),
    declaresNan: text.includes("fn lrk_nan("),
    gatherFlag: text.includes(GATHER_FLAG),
    opaqueZero: text.includes("lrk_opaque_zero()"),
  };
}

/**
 * Facts of the declarations and bodies rendered before: a deep model's kernels repeat the same
 * code (a template's cached code, the same helpers) in every layer, and reading it again for each
 * kernel was most of rendering. Bounded: a long-lived process plans many programs.
 */
const factsOfText = new Map<string, CodeFacts>();
const FACTS_KEPT = 1024;

function cachedFacts(text: string): CodeFacts {
  let facts = factsOfText.get(text);
  if (!facts) {
    if (factsOfText.size >= FACTS_KEPT) factsOfText.clear();
    factsOfText.set(text, (facts = codeFacts(text)));
  }
  return facts;
}

/** A body's lines, indented and joined, with its facts; per body array (a cached template's). */
interface BodyCode {
  text: string;
  facts: CodeFacts;
  /** Reads `main`'s `lrk_zero`. */
  usesZero: boolean;
}
const bodyCodes = new WeakMap<readonly string[], BodyCode>();

function bodyCode(body: readonly string[]): BodyCode {
  let code = bodyCodes.get(body);
  if (!code) {
    const text = indent(body).join("\n");
    code = { text, facts: codeFacts(text), usesZero: body.some((l) => /\blrk_zero\b/.test(l)) };
    bodyCodes.set(body, code);
  }
  return code;
}

/** The WGSL module of a kernel and the KernelSource the plan and executor consume. */
export function renderKernel(spec: KernelSpec): ParamKernelSource {
  const named = spec.buffers.filter(declared);
  const bindings = spec.buffers.map((b, i) => {
    if (!declared(b)) return "";
    const note = b.note ? `  // ${b.note}` : "";
    return `@group(0) @binding(${i}) var<storage, ${b.access}> ${b.name}: array<${b.type}>;${note}`;
  });
  const uniforms = spec.uniforms ?? [];
  // A uniform struct's size is a multiple of 16 bytes: whole groups of 4 u32s.
  const params = uniforms.map((u) => u.value);
  while (params.length % 4 !== 0) params.push(0);
  const uniform = uniforms.length
    ? [
        `struct Dims {`,
        ...params.map((_, i) => `  v${i}: u32,`),
        `}`,
        `@group(0) @binding(${spec.buffers.length}) var<uniform> dims: Dims;`,
      ]
    : [];
  const body = bodyCode(spec.body);
  const opening = [
    ...(body.usesZero
      ? ["let lrk_zero = lrk_opaque_zero(); // 0, unknown to the shader compiler"]
      : []),
    ...uniforms.map((u, i) => `let ${u.name} = dims.v${i};`),
  ];
  const pieces = [...opening.map(codeFacts), body.facts];
  // A template that writes an infinite or NaN literal itself (a max's start, a mask) without
  // asking for its helper still gets it: an undefined `lrk_inf()` would fail the whole plan.
  const given = spec.declarations ?? [];
  const givenFacts = given.map(cachedFacts);
  const used = [...givenFacts, ...pieces];
  const missing = [
    ...(used.some((f) => f.inf) && !givenFacts.some((f) => f.declaresInf) ? ["lrk_inf"] : []),
    ...(used.some((f) => f.nan) && !givenFacts.some((f) => f.declaresNan) ? ["lrk_nan"] : []),
  ];
  const helpers = missing.length ? helperCode(missing) : undefined;
  const declarations = helpers !== undefined ? [...given, helpers] : given;
  const all = helpers !== undefined ? [...used, cachedFacts(helpers)] : used;
  // the gather error flag (compiler/wgsl.ts): bound after the storage buffers and the uniform
  const usesFlag = all.some((f) => f.gatherFlag);
  const flagBinding = spec.buffers.length + (uniforms.length ? 1 : 0);
  const flag = usesFlag
    ? `@group(0) @binding(${flagBinding}) var<storage, read_write> ${GATHER_FLAG}: array<i32>;`
    : "";
  const usesZero = all.some((f) => f.opaqueZero);
  if (usesZero && !named.length) throw new Error(`${spec.name}: an opaque zero needs a binding`);
  const zero = usesZero ? opaqueZeroFunction(named[0]!.name) : "";
  const wg = spec.workgroupSize;
  const size: [number, number, number] =
    typeof wg === "number" ? [wg, 1, 1] : [wg[0], wg[1], wg[2]];
  const inputs = Object.entries(spec.builtins).map(
    ([name, b]) => `@builtin(${b}) ${name}: ${BUILTIN_TYPE[b]}`,
  );
  // A binding of f16 values (a frozen tensor stored as f16) needs the extension and the feature.
  const half = named.some((b) => /\bf16\b/.test(b.type));
  const wgsl = [
    spec.header ?? "",
    ...(half ? ["enable f16;"] : []),
    ...(spec.directives ?? []),
    ...bindings,
    ...uniform,
    flag,
    zero,
    half ? `fn ${HALF_LOAD}(x: f16) -> f32 { return f32(x); }` : "",
    ...declarations,
    `@compute @workgroup_size(${typeof wg === "number" ? wg : size.join(", ")})`,
    `fn main(${inputs.join(", ")}) {`,
    ...indent(opening),
    body.text,
    `}`,
  ]
    .filter((s) => s !== "")
    .join("\n");
  return {
    name: spec.name,
    wgsl: wgsl + "\n",
    entryPoint: "main",
    workgroupSize: size,
    dispatch: spec.dispatch,
    bindings: spec.buffers.map((b) => ({ buffer: b.buffer, access: b.access })),
    features: [...(spec.features ?? []), ...(half ? ["shader-f16"] : [])],
    ...(uniforms.length ? { params } : {}),
    ...(usesFlag ? { gatherFlag: flagBinding } : {}),
  };
}

/** `lines` indented by `n` spaces. */
export function indent(lines: readonly string[], n = 2): string[] {
  return lines.map((l) => " ".repeat(n) + l);
}

// ---------------------------------------------------------------------------- the opaque zero

/**
 * lavapipe's LLVM unrolls every loop whose trip count it knows, which costs seconds of shader
 * compilation per kernel (measured: 1 s for a 24-step loop, 40 ms with an unknown count; matmul
 * tiles went from 1–6 s to 0.1–0.5 s a cold compile). Loop bounds and starts therefore add a
 * zero the compiler cannot see through: whether the kernel's first storage binding is empty.
 * WebGPU never binds an empty runtime-sized array (the minimum binding size is one element), so
 * it is 0 at run time, but it comes from the bound buffer's size, unknown when the shader is
 * compiled. (`arrayLength >> 31` would not do: the compiler knows arrayLength of an f32 array is
 * under 2^30.) It depends on a binding alone, so it is uniform (loops with barriers may use it),
 * and any function can compute it, not just the entry point.
 *
 * Templates write `lrk_zero` (a u32) in `main`'s body, where renderKernel computes it once, and
 * `lrk_opaque_zero()` in module-scope functions (a matmul epilogue, the workgroup reduction),
 * which cannot see `main`'s locals; renderKernel declares what is used.
 */
function opaqueZeroFunction(binding: string): string {
  return [
    `// 0 at run time, unknown to the shader compiler: loops bounded with it are not unrolled`,
    `fn lrk_opaque_zero() -> u32 {`,
    `  return u32(arrayLength(&${binding}) == 0u);`,
    `}`,
  ].join("\n");
}

// ---------------------------------------------------------------------------- reductions

export type Combine = "sum" | "max";

/**
 * a ⊕ b; max propagates NaN, as the interpreter's does. NaN is tested on the bits: lavapipe's
 * LLVM folds `b != b` to false (measured: a max over a NaN gave the largest number).
 */
export function combine(fn: Combine, a: string, b: string, type = "f32"): string {
  if (fn !== "max") return `${a} + ${b}`;
  const nan = type === "f32" ? ` || (bitcast<u32>(${b}) & 0x7fffffffu) > 0x7f800000u` : "";
  return `select(${a}, ${b}, ${b} > ${a}${nan})`;
}

/**
 * The tree reduction over workgroup memory: a `size`-element `var<workgroup>` array of `type`
 * and, per combine, `lrk_wg_<fn>(x, lid, lane, n) -> type`: the `n` invocations lid − lane … lid −
 * lane + n − 1 (n a power of two, lane < n: a whole workgroup with lane = lid, or one segment of
 * it) each give x, and each gets the combined value. It holds barriers: call it from uniform
 * control flow.
 */
export function workgroupReduce(type: string, size: number, fns: Iterable<Combine>): string[] {
  const used = [...new Set(fns)].sort();
  if (!used.length) return [];
  const out = [`var<workgroup> lrk_wg: array<${type}, ${size}>;`];
  for (const fn of used)
    out.push(
      [
        `fn lrk_wg_${fn}(x: ${type}, lid: u32, lane: u32, n: u32) -> ${type} {`,
        `  lrk_wg[lid] = x;`,
        `  workgroupBarrier();`,
        `  for (var s = n / 2u + lrk_opaque_zero(); s > 0u; s >>= 1u) {`,
        `    if (lane < s) {`,
        `      let a = lrk_wg[lid];`,
        `      let b = lrk_wg[lid + s];`,
        `      lrk_wg[lid] = ${combine(fn, "a", "b", type)};`,
        `    }`,
        `    workgroupBarrier();`,
        `  }`,
        `  let r = lrk_wg[lid - lane];`,
        // the next call overwrites lrk_wg: everyone must have read r first
        `  workgroupBarrier();`,
        `  return r;`,
        `}`,
      ].join("\n"),
    );
  return out;
}

// ---------------------------------------------------------------------------- split bindings

/** Where a split buffer's chunks lie (PlannedBuffer.chunks, compiler/memory-plan.ts). */
export type ChunksOf = (buffer: number) => readonly BufferChunk[] | undefined;

/** Bytes of one element of a storage array's element type. */
function elementBytes(type: string): number {
  const scalar: Record<string, number> = { f32: 4, i32: 4, u32: 4, f16: 2 };
  if (type in scalar) return scalar[type]!;
  const vector = /^vec([234])<(\w+)>$/.exec(type);
  if (vector && vector[2]! in scalar) return Number(vector[1]) * scalar[vector[2]!]!;
  throw new Error(`split binding: no element size for array<${type}>`);
}

const STORAGE_DECLARATION =
  /^@group\(0\) @binding\((\d+)\) var<storage, (read|read_write)> (\w+): array<(.+?)>;(.*)$/;

/**
 * `kernel` with every storage binding of a split buffer (one larger than a storage binding may
 * be) bound as its chunks, `NAME_c0`, `NAME_c1`, …, and every element access `NAME[i]` made a
 * call of an accessor that picks the chunk: `NAME_get(u32(i))`, and for stores
 * `NAME_set(u32(i), v)` (a compound `NAME[i] += v` reads and writes). Templates are unchanged:
 * this rewrites the rendered module, for every template alike (vec4 and packed-word arrays
 * included: chunks are multiples of 256 bytes, whole elements of any type). The other bindings
 * are renumbered after the chunks, the uniform and the gather flag with them. A kernel with no
 * split buffer is returned as it is, so plans without one are unchanged to the byte.
 */
export function splitBindings(kernel: ParamKernelSource, chunksOf: ChunksOf): ParamKernelSource {
  if (!kernel.bindings.some((b) => chunksOf(b.buffer))) return kernel;
  const bindings: KernelBinding[] = [];
  const first: number[] = []; // old binding → its first new binding
  kernel.bindings.forEach((b, i) => {
    first[i] = bindings.length;
    const chunks = chunksOf(b.buffer);
    if (!chunks) bindings.push(b);
    else
      for (const c of chunks)
        bindings.push({ buffer: b.buffer, access: b.access, offset: c.offset, size: c.bytes });
  });
  const shift = bindings.length - kernel.bindings.length;
  const renumber = (n: number) => (n < kernel.bindings.length ? first[n]! : n + shift);
  const split: { name: string; type: string; writable: boolean }[] = [];
  const lines = kernel.wgsl.split("\n").flatMap((line) => {
    const m = STORAGE_DECLARATION.exec(line);
    if (!m)
      return [
        line.replace(
          /@group\(0\) @binding\((\d+)\)/g,
          (_, n) => `@group(0) @binding(${renumber(Number(n))})`,
        ),
      ];
    const old = Number(m[1]);
    const chunks =
      old < kernel.bindings.length ? chunksOf(kernel.bindings[old]!.buffer) : undefined;
    if (!chunks) return [line.replace(`@binding(${old})`, `@binding(${renumber(old)})`)];
    const [, , access, name, type, note] = m as unknown as string[];
    split.push({ name: name!, type: type!, writable: access === "read_write" });
    return [
      ...chunks.map(
        (c, j) =>
          `@group(0) @binding(${first[old]! + j}) var<storage, ${access}> ${name}_c${j}: array<${type}>;${j === 0 ? note : ""}  // bytes ${c.offset}..${c.offset + c.bytes}`,
      ),
      ...chunkAccessors(name!, type!, chunks, access === "read_write"),
    ];
  });
  // Module directives (`enable …;`) come first; the accessors follow the declarations, and every
  // use after them is rewritten.
  let wgsl = lines.join("\n");
  for (const s of split) wgsl = chunkedUses(wgsl, s.name);
  return {
    ...kernel,
    wgsl,
    bindings,
    ...(kernel.gatherFlag !== undefined ? { gatherFlag: renumber(kernel.gatherFlag) } : {}),
  };
}

/** `NAME_get(i)` and, when writable, `NAME_set(i, v)`: element i of the chunked array NAME. */
function chunkAccessors(
  name: string,
  type: string,
  chunks: readonly BufferChunk[],
  writable: boolean,
): string[] {
  const size = elementBytes(type);
  const starts = chunks.map((c) => c.offset / size);
  // chunk j holds elements starts[j] .. starts[j + 1] - 1; the last takes whatever is past it
  const pick = (action: (j: number, local: string) => string) =>
    chunks.map((_, j) => {
      const local = j === 0 ? "i" : `i - ${starts[j]}u`;
      if (j === chunks.length - 1) return `  ${action(j, local)}`;
      return `  if (i < ${starts[j + 1]}u) { ${action(j, local)} }`;
    });
  const get = [
    `// ${name}: ${chunks.length} bindings of one buffer (over the device's storage binding size)`,
    `fn ${name}_get(i: u32) -> ${type} {`,
    ...pick((j, local) => `return ${name}_c${j}[${local}];`),
    `}`,
  ];
  if (!writable) return get;
  return [
    ...get,
    `fn ${name}_set(i: u32, v: ${type}) {`,
    ...pick(
      (j, local) => `${name}_c${j}[${local}] = v;${j === chunks.length - 1 ? "" : " return;"}`,
    ),
    `}`,
  ];
}

/** The offset just past the bracket that closes the one before `from`. */
function closing(text: string, from: number, open: string, close: string): number {
  let depth = 1;
  let i = from;
  for (; i < text.length && depth > 0; i++)
    if (text[i] === open) depth++;
    else if (text[i] === close) depth--;
  if (depth !== 0) throw new Error(`split binding: unbalanced ${open}${close} in ${text}`);
  return i;
}

/** The offset of the `;` ending the statement from `from` (outside any brackets). */
function statementEnd(text: string, from: number): number {
  let depth = 0;
  for (let i = from; i < text.length; i++) {
    const c = text[i]!;
    if (c === "(" || c === "[" || c === "{") depth++;
    else if (c === ")" || c === "]" || c === "}") depth--;
    else if (c === ";" && depth === 0) return i;
  }
  throw new Error(`split binding: a statement without its ';' in ${text}`);
}

const ASSIGNMENT = /^\s*(<<|>>|[-+*/%&|^])?=(?!=)/;

/**
 * `code` with every access of the array `name` made an accessor call (see splitBindings).
 * Comments are left as they are. A pointer to the whole array (`arrayLength(&name)`, the opaque
 * zero's; `_ = &name`, a prologue keeping its binding used) takes the first chunk: any chunk is
 * as non-empty, and a binding a shader leaves unused is allowed by the explicit layout.
 */
function chunkedUses(code: string, name: string): string {
  const comments: string[] = [];
  const hidden = code
    .replace(/\/\/[^\n]*/g, (c) => `\u0000${comments.push(c) - 1}\u0000`)
    .replace(new RegExp(`&${name}\\b(?!\\s*\\[)`, "g"), `&${name}_c0`);
  const rewrite = (text: string): string => {
    const open = new RegExp(`(?<![\\w.&])${name}\\[`, "g");
    let out = "";
    let from = 0;
    for (let m = open.exec(text); m; m = open.exec(text)) {
      const start = m.index + name.length + 1;
      const end = closing(text, start, "[", "]");
      const index = `u32(${rewrite(text.slice(start, end - 1))})`;
      const assigned = ASSIGNMENT.exec(text.slice(end));
      out += text.slice(from, m.index);
      if (!assigned) {
        out += `${name}_get(${index})`;
        from = end;
      } else {
        const valueStart = end + assigned[0].length;
        const semicolon = statementEnd(text, valueStart);
        const value = rewrite(text.slice(valueStart, semicolon)).trim();
        const op = assigned[1];
        out += op
          ? `${name}_set(${index}, ${name}_get(${index}) ${op} (${value}))`
          : `${name}_set(${index}, ${value})`;
        from = semicolon;
      }
      open.lastIndex = from;
    }
    return out + text.slice(from);
  };
  if (new RegExp(`&${name}\\[`).test(hidden))
    throw new Error(`split binding: a pointer into ${name} (atomics are not split)`);
  return rewrite(hidden).replace(/\u0000(\d+)\u0000/g, (_, n) => comments[Number(n)]!);
}
