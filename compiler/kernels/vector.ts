// Reading 4 neighbouring elements at once, for the map and row templates. A vec4 kernel computes
// the elements of a group of WIDTH neighbours on the last axis of what it writes (starting at a
// multiple of WIDTH) one after another, with the emitter as for one element, but its loads are
// shared: a node read at WIDTH neighbours of its own last axis (starting at a multiple of WIDTH)
// is one vec4 load, a node read at one element for all WIDTH one load. On lavapipe a load or
// store whose address differs per lane is a per-lane loop whatever its width, so loads, not
// arithmetic, are what vec4 saves. Values are computed element by element as before: results are
// the scalar kernel's.
import { numel, type Graph, type Shape } from "../ir.js";
import type { BindingTable, Emitter, PackedOf } from "../wgsl.js";
import type { KernelBuffer } from "./types.js";

/** Elements of one group. */
export const WIDTH = 4;
const COMPONENT = ["x", "y", "z", "w"];

/**
 * How a group reads a node: "vector", WIDTH neighbours on the node's own last axis starting at a
 * multiple of WIDTH (one aligned vec4 of its buffer); "same", one element for all; "other",
 * anything else (element by element).
 */
export type Access = "vector" | "same" | "other";

const last = (shape: Shape) => shape[shape.length - 1] ?? 1;

/** Whether `shape`'s last axis is whole groups. */
export const vectorRows = (shape: Shape) =>
  shape.length > 0 && last(shape) % WIDTH === 0 && numel(shape) > 0;

/**
 * How a group of each root (read as "vector") reads each node below it, following the emitter's
 * index arithmetic op by op; a node reached in two ways is "other" unless both agree. Traversal
 * stops at buffers and at `leaves` (values the kernel holds already). Nodes below an inlined
 * matmul are "other": its loop reads them in a scope of its own.
 */
export function vectorReads(
  graph: Graph,
  roots: readonly number[],
  isBuffer: (node: number) => boolean,
  leaves: ReadonlySet<number> = new Set(),
): Map<number, Access> {
  const access = new Map<number, Access>();
  const work: [number, Access][] = roots.map((o) => [o, "vector"]);
  const reach = (id: number, a: Access) => work.push([id, a]);
  while (work.length) {
    const [id, a] = work.pop()!;
    const known = access.get(id);
    const joined: Access = known === undefined || known === a ? a : "other";
    if (joined === known) continue;
    access.set(id, joined);
    if (isBuffer(id) || leaves.has(id)) continue;
    const node = graph.node(id);
    const input = (i: number) => graph.node(node.inputs[i]!);
    // the access of an input whose index follows the node's where `ok`
    const keep = (ok: boolean): Access =>
      joined === "vector" ? (ok ? "vector" : "other") : joined;
    const r = node.shape.length;
    switch (node.op.kind) {
      case "unary":
      case "binary":
      case "where":
      case "cast":
        node.inputs.forEach((i) => reach(i, joined));
        break;
      case "reshape":
        reach(node.inputs[0]!, keep(vectorRows(input(0).shape)));
        break;
      case "permute":
        reach(node.inputs[0]!, keep(node.op.perm[r - 1] === r - 1));
        break;
      case "expand": {
        const broadcast = last(input(0).shape) === 1 && last(node.shape) !== 1;
        reach(node.inputs[0]!, joined === "vector" && broadcast ? "same" : joined);
        break;
      }
      case "slice": {
        const ok = node.op.steps[r - 1] === 1 && node.op.starts[r - 1]! % WIDTH === 0;
        reach(node.inputs[0]!, keep(ok && vectorRows(input(0).shape)));
        break;
      }
      case "pad":
        reach(
          node.inputs[0]!,
          keep(node.op.before[r - 1] === 0 && last(input(0).shape) === last(node.shape)),
        );
        break;
      case "gather": {
        // table[ids[c0 … cs-1], cs …]: where the last axis is the table's, one id for the group
        const inTable = input(0).shape.length > 1;
        reach(node.inputs[0]!, keep(inTable && vectorRows(input(0).shape)));
        reach(
          node.inputs[1]!,
          joined === "same" || (joined === "vector" && inTable) ? "same" : "other",
        );
        break;
      }
      default:
        // const, iota, random (computed per element), an inlined low-rank matmul, …
        node.inputs.forEach((i) => reach(i, "other"));
    }
  }
  return access;
}

/**
 * The loads of a vec4 kernel. Inside a group (`group`), the emitter runs once per element
 * (`element(j)`); a node's loads for the first element are made (`let wN = …`) and the others'
 * loads of it are matched to them by their order, which is the same for every element when each
 * element's flat index is a plain name (`g0`, `g1`, …: the emitter then builds the same
 * expressions for each). `matched` turns false if they were not: the caller falls back to the
 * scalar kernel. Outside groups, loads are element loads (of a vec4 array where the buffer is
 * bound as one).
 */
export class VectorLoads {
  /** f32 buffers bound as vec4 arrays: those some node is read from as whole groups. */
  readonly buffers = new Set<number>();
  matched = true;
  private component: number | undefined;
  private made = new Map<number, string[]>();
  private seen = new Map<number, number>();

  constructor(
    private readonly graph: Graph,
    private readonly table: BindingTable,
    private readonly access: ReadonlyMap<number, Access>,
    isBuffer: (node: number) => boolean,
    private readonly bufferOf: (node: number) => number,
    private readonly packedOf: PackedOf = () => undefined,
    /** Binding names that are vec4 arrays whatever they hold (a vec4 kernel's outputs). */
    private readonly vectorNames: (name: string) => boolean = () => false,
  ) {
    for (const [id, a] of access)
      if (a === "vector" && isBuffer(id) && this.plain(id)) this.buffers.add(bufferOf(id));
  }

  private plain(id: number): boolean {
    return this.graph.node(id).dtype === "f32" && !this.packedOf(id);
  }

  private vectorArray(name: string, id: number): boolean {
    return this.vectorNames(name) || (this.plain(id) && this.buffers.has(this.bufferOf(id)));
  }

  /** A new group: the next elements' loads are matched to new first loads. */
  group(): void {
    this.made = new Map();
  }

  /** The emitter computes element `j` of the group now (undefined: outside groups). */
  element(j: number | undefined): void {
    // the element just emitted asked for as many loads of each node as the first
    if (this.component !== undefined && this.component > 0)
      for (const [id, v] of this.made)
        if ((this.seen.get(id) ?? 0) !== v.length) this.matched = false;
    this.component = j;
    this.seen = new Map();
  }

  /** The emitter's `load`: buffer node `id` at flat index `f`. */
  load(em: Emitter, id: number, f: string): string {
    const name = this.table.name(id);
    const element = () =>
      this.vectorArray(name, id)
        ? `${name}[u32(${f}) / ${WIDTH}u][u32(${f}) % ${WIDTH}u]`
        : this.table.load(id, f);
    let a = this.access.get(id) ?? "other";
    if (a === "vector" && !this.vectorArray(name, id)) a = "other";
    if (a === "other" || this.component === undefined) return element();
    const nth = this.seen.get(id) ?? 0;
    this.seen.set(id, nth + 1);
    if (this.component === 0) {
      const v = em.let(a === "vector" ? `${name}[u32(${f}) / ${WIDTH}u]` : element(), "w");
      this.made.set(id, [...(this.made.get(id) ?? []), v]);
      return a === "vector" ? `${v}.x` : v;
    }
    const v = this.made.get(id)?.[nth];
    if (v === undefined) {
      this.matched = false;
      return element();
    }
    return a === "vector" ? `${v}.${COMPONENT[this.component]}` : v;
  }

  /** `buffers` with the vec4 arrays' element type (and `also`'s: a kernel's vec4 outputs). */
  declare(buffers: readonly KernelBuffer[], also: (b: KernelBuffer) => boolean = () => false) {
    return buffers.map((b) =>
      b.type === "f32" && (also(b) || (b.access === "read" && this.buffers.has(b.buffer)))
        ? { ...b, type: "vec4<f32>" }
        : b,
    );
  }
}
