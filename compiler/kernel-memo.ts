// Kernels of groups alike are emitted once. A 12-layer model's 1,494 kernels take about 100
// emissions: each layer's groups are the same computation on other nodes and buffers. A group's
// kernels are emitted from a small graph of its own — the nodes the kernel can see, renumbered in
// order (its computed nodes, what they read, up to the buffers it binds) — with canonical buffers
// (numbered by first use) and placeholder names; the key is that small graph written out with
// every fact the emitters read (ops, shapes, dtypes, source lines, which nodes are buffers, packed
// storage, which share a buffer, a buffer's chunks). Groups with the same key get the same kernels,
// with node ids, names and buffers put back: node ids appear only in comments and kernel names
// (`// %12 param:w`, `map f32[4] %7`), names only in comments, buffers only in `bindings`.
//
// A kernel whose code (not a comment) names a node — the gather flag writes the gather's id + 1
// (compiler/wgsl.ts) — is emitted from the real graph every time and never shared.
import { exactNumbers, Graph, opKey, type Node } from "./ir.js";
import type { KernelGroup } from "./fuse/index.js";
import type { ParamKernelSource } from "./kernels/special.js";

/** Emits a group's kernels (bindings split into chunks), as emitKernels does. */
export type EmitGroup = (g: KernelGroup, c: GroupContext) => ParamKernelSource[];

/** What a group's kernels are made from: its graph and how its nodes are stored. */
export interface GroupContext {
  graph: Graph;
  isBuffer: (node: number) => boolean;
  bufferOf: (node: number) => number;
  packedOf: (node: number) => number | undefined;
  chunksOf: (buffer: number) => readonly { offset: number; bytes: number }[] | undefined;
  scratch: ReadonlyMap<number, readonly number[]>;
}

/** A kernel emitted from a group's small graph: text split where node ids and names go back. */
interface Template {
  kernel: ParamKernelSource;
  /** The WGSL as literal pieces with slots between them: [text, slot, text, slot, …, text]. */
  pieces: (string | Slot)[];
  namePieces: (string | Slot)[];
}

/** A node id (`id`), a node's name (`name`) or an input op's name (`opName`), by canonical index. */
type Slot = { kind: "id" | "name" | "opName"; index: number };

const NAME = (i: number) => `@@${i}@@`;
const OP_NAME = (i: number) => `@#${i}#@`;
/** Ids, names and op names in a comment or kernel name of the small graph's kernels. */
const SLOT = /%(\d+)|@@(\d+)@@|@#(\d+)#@/g;

export class KernelMemo {
  private readonly templates = new Map<string, Template[] | "unshared">();
  /** Groups whose kernels came from another group's, and groups emitted anew. */
  hits = 0;
  misses = 0;

  constructor(readonly emit: EmitGroup) {}

  /**
   * A node's facts (what `smallGroup` keys on but its inputs and how this group stores it) as a
   * number, made once per node (`Marks.facts`): a group's key names each of its nodes in a few
   * characters.
   */
  private readonly factIds = new Map<string, number>();
  private readonly factsOf = (graph: Graph, id: number, packed: number | undefined): number => {
    const known = this.marks!.facts[id]!;
    if (known >= 0) return known;
    const n = graph.nodes[id]!;
    const op = n.op.kind === "input" ? `input.${n.op.role}` : opKey(n.op);
    const source = n.source ? `${n.source.file}:${n.source.line}` : "";
    const range = n.range ? JSON.stringify(n.range, exactNumbers) : "";
    const text = `${op}|${n.shape.join(",")}|${n.dtype}|${n.name !== undefined ? 1 : 0}|${source}|${range}|${packed ?? 0}`;
    let facts = this.factIds.get(text);
    if (facts === undefined) this.factIds.set(text, (facts = this.factIds.size));
    this.marks!.facts[id] = facts;
    return facts;
  };

  /** Marks per node of the graph for `smallGroup`, reused from group to group (one graph per memo). */
  private marks?: Marks;

  kernels(g: KernelGroup, c: GroupContext): ParamKernelSource[] {
    if (this.marks?.index.length !== c.graph.nodes.length) this.marks = marks(c.graph);
    const small = smallGroup(g, c, this.factsOf, this.marks);
    const known = this.templates.get(small.key);
    if (known === "unshared") return this.emit(g, c);
    if (known) {
      this.hits++;
      return known.map((t) => fill(t, small, c));
    }
    this.misses++;
    const emitted = this.emit(small.group, {
      graph: smallGraph(small, c.graph),
      isBuffer: (i) => small.bufferClass[i]! >= 0,
      bufferOf: (i) => small.bufferClass[i]!,
      packedOf: (i) => c.packedOf(small.nodes[i]!),
      chunksOf: (k) => c.chunksOf(small.buffers[k]!),
      scratch: small.scratch,
    });
    if (emitted.some((k) => k.gatherFlag !== undefined)) {
      this.templates.set(small.key, "unshared");
      return this.emit(g, c);
    }
    const templates = emitted.map(template);
    this.templates.set(small.key, templates);
    return templates.map((t) => fill(t, small, c));
  }
}

interface SmallGroup {
  key: string;
  group: KernelGroup;
  /** Canonical index → the real node. */
  nodes: number[];
  /** The real node → its canonical index (valid until the memo's next group: `Marks.index`). */
  at: (id: number) => number;
  /** Canonical index → whether the kernel computes it or reads it through inputs it computes. */
  inside: Uint8Array;
  /** Canonical index → its canonical buffer (-1: the node has no buffer). */
  bufferClass: Int32Array;
  /** Canonical buffer → the real buffer. */
  buffers: number[];
  scratch: Map<number, number[]>;
}

/**
 * Per node of a graph: the last group that computes it and the last that saw it (stamps, one
 * per group), and its index in that group's small graph. Typed arrays rather than a set and a
 * map per group: 1,500 groups of a 12-layer model walk 20,000 nodes, and the compiler runs
 * unoptimized (cli/jit.ts).
 */
interface Marks {
  /** KernelMemo.factsOf's number for the node (-1: not made yet). */
  facts: Int32Array;
  computed: Int32Array;
  seen: Int32Array;
  index: Int32Array;
  stamp: number;
}

function marks(graph: Graph): Marks {
  const n = graph.nodes.length;
  return {
    facts: new Int32Array(n).fill(-1),
    computed: new Int32Array(n),
    seen: new Int32Array(n),
    index: new Int32Array(n),
    stamp: 0,
  };
}

/**
 * The group renumbered, with the key that says what its kernels depend on: per node its facts
 * (`factsOf`), its inputs if the kernel computes it, whether it does and its buffer class. Its
 * `at` reads `m`: valid until the next group.
 */
function smallGroup(
  g: KernelGroup,
  c: GroupContext,
  factsOf: (graph: Graph, id: number, packed: number | undefined) => number,
  m: Marks,
): SmallGroup {
  const { graph } = c;
  const { computed, seen, index } = m;
  const stamp = ++m.stamp;
  for (const id of g.nodes) computed[id] = stamp;
  // every node the emitters may look at: the group's nodes and, through inputs, what they read,
  // stopping at buffers the kernel binds
  const found: number[] = [];
  const stack = [...g.nodes, ...g.reads, ...g.outputs, g.output, g.anchor];
  while (stack.length) {
    const id = stack.pop()!;
    if (seen[id] === stamp) continue;
    seen[id] = stamp;
    found.push(id);
    if (computed[id] === stamp || !c.isBuffer(id)) {
      const inputs = graph.nodes[id]!.inputs;
      for (let k = 0; k < inputs.length; k++) stack.push(inputs[k]!);
    }
  }
  const sorted = Int32Array.from(found).sort();
  const nodes = Array.from(sorted);
  const inside = new Uint8Array(nodes.length);
  const buffered = new Uint8Array(nodes.length);
  for (let i = 0; i < nodes.length; i++) {
    const id = nodes[i]!;
    buffered[i] = c.isBuffer(id) ? 1 : 0;
    inside[i] = computed[id] === stamp || !buffered[i] ? 1 : 0;
    index[id] = i;
  }
  const at = (id: number) => index[id]!;
  const buffers: number[] = [];
  const classOf = new Map<number, number>();
  const bufferClassOf = (buffer: number) => {
    let k = classOf.get(buffer);
    if (k === undefined) classOf.set(buffer, (k = buffers.push(buffer) - 1));
    return k;
  };
  const bufferClass = new Int32Array(nodes.length);
  let key = "";
  for (let i = 0; i < nodes.length; i++) {
    const id = nodes[i]!;
    const n = graph.nodes[id]!;
    bufferClass[i] = buffered[i] ? bufferClassOf(c.bufferOf(id)) : -1;
    // a boundary node (a buffer read) keeps its op in the small graph, without inputs; an input's
    // name never matters (it is a placeholder there)
    let inputs = "";
    if (inside[i] && n.inputs.length > 0) {
      inputs = "(";
      for (let k = 0; k < n.inputs.length; k++) inputs += `${k ? "," : ""}${index[n.inputs[k]!]}`;
      inputs += ")";
    }
    key += `${factsOf(graph, id, c.packedOf(id))}${inputs}|${inside[i]}|${bufferClass[i]};`;
  }
  const group = renumberGroup(g, at);
  const scratch = new Map<number, number[]>();
  const anchorScratch = c.scratch.get(g.anchor);
  if (anchorScratch) scratch.set(at(g.anchor), anchorScratch.map(bufferClassOf));
  const chunks = buffers.map((b) => c.chunksOf(b)?.map((x) => [x.offset, x.bytes]) ?? 0);
  key += JSON.stringify([group, [...scratch], chunks]);
  return { key, group, nodes, at, inside, bufferClass, buffers, scratch };
}

/**
 * The small graph the kernels are emitted from: the group's nodes renumbered in order, names
 * and input ops' names as placeholders, boundary nodes without inputs.
 */
function smallGraph(small: SmallGroup, graph: Graph): Graph {
  const out = new Graph();
  small.nodes.forEach((id, i) => {
    const n = graph.node(id);
    const node: Node = {
      id: i,
      op: n.op.kind === "input" ? { ...n.op, name: OP_NAME(i) } : n.op,
      inputs: small.inside[i] ? n.inputs.map(small.at) : [],
      shape: n.shape,
      dtype: n.dtype,
      ...(n.name !== undefined ? { name: NAME(i) } : {}),
      ...(n.source ? { source: n.source } : {}),
      ...(n.range ? { range: n.range } : {}),
    };
    out.nodes.push(node);
  });
  return out;
}

/** The group with every node id replaced by `at(id)`. */
function renumberGroup(g: KernelGroup, at: (id: number) => number): KernelGroup {
  const all = (ids: readonly number[]) => ids.map(at);
  const operand = (o: KernelGroup["a"]) => o && { ...o, node: at(o.node) };
  return {
    ...g,
    output: at(g.output),
    outputs: all(g.outputs),
    anchor: at(g.anchor),
    nodes: all(g.nodes),
    reads: all(g.reads),
    epilogue: all(g.epilogue),
    ...(g.a ? { a: operand(g.a) } : {}),
    ...(g.b ? { b: operand(g.b) } : {}),
    ...(g.lowRank ? { lowRank: all(g.lowRank) } : {}),
    ...(g.row ? { row: { ...g.row, reduces: all(g.row.reduces), totals: all(g.row.totals) } } : {}),
  };
}

/** A small graph's kernel with the slots of its comments and name found. */
function template(kernel: ParamKernelSource): Template {
  const pieces: (string | Slot)[] = [];
  let literal = "";
  const lines = kernel.wgsl.split("\n");
  lines.forEach((line, i) => {
    const end = i < lines.length - 1 ? "\n" : "";
    const comment = line.indexOf("//");
    if (comment < 0) {
      literal += line + end;
      return;
    }
    const parts = slots(line.slice(comment) + end);
    literal += line.slice(0, comment) + (parts[0] as string);
    for (let j = 1; j < parts.length; j += 2) {
      pieces.push(literal, parts[j]!);
      literal = parts[j + 1] as string;
    }
  });
  pieces.push(literal);
  return { kernel, pieces, namePieces: slots(kernel.name) };
}

/** `text` as [literal, slot, literal, …, literal]. */
function slots(text: string): (string | Slot)[] {
  const out: (string | Slot)[] = [];
  let last = 0;
  for (const m of text.matchAll(SLOT)) {
    out.push(text.slice(last, m.index));
    const [kind, index] =
      m[1] !== undefined ? ["id", m[1]] : m[2] !== undefined ? ["name", m[2]] : ["opName", m[3]!];
    out.push({ kind: kind as Slot["kind"], index: Number(index) });
    last = m.index! + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}

/** The template's kernel for the real group: node ids, names and buffers put back. */
function fill(t: Template, small: SmallGroup, c: GroupContext): ParamKernelSource {
  const slot = (s: Slot) => {
    const node = small.nodes[s.index];
    if (node === undefined) throw new Error(`kernel memo: slot %${s.index} is not a node`);
    if (s.kind === "id") return `%${node}`;
    const n = c.graph.node(node);
    return s.kind === "name" ? n.name! : (n.op as { name: string }).name;
  };
  const join = (pieces: (string | Slot)[]) => {
    let text = "";
    for (const p of pieces) text += typeof p === "string" ? p : slot(p);
    return text;
  };
  return {
    ...t.kernel,
    name: join(t.namePieces),
    wgsl: join(t.pieces),
    bindings: t.kernel.bindings.map((b) => ({ ...b, buffer: small.buffers[b.buffer]! })),
  };
}
