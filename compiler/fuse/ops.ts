// What fusion needs to know about each op kind, as one table: the kind of kernel it anchors (or
// that it is inlined into), whether it keeps the element order, and what recomputing it costs.
import type { Graph, Node, Op } from "../ir.js";

type OpKind = Op["kind"];

/**
 * - input: a buffer from outside;
 * - map: computed per output element, inlined into the kernels that read it or materialized by a
 *   map kernel of its own;
 * - reduce, matmul: the anchor of a kernel with an epilogue chain;
 * - special: a kernel of its own reading buffers (scatterAdd, svd, qr, topkMask, quantize, quantScale).
 */
export type OpRole = "input" | "map" | "reduce" | "matmul" | "special";

/**
 * Arithmetic an op adds when inlined (see `costs`): `free` leaves (and buffer reads), `view` (index
 * arithmetic: its input's cost), `arith` (1 plus its inputs'), `dear` (transcendental-like: 8).
 */
type CostRule = "free" | "view" | "arith" | "dear";

interface OpClass {
  role: OpRole;
  /** Same element order in and out (unary, binary, where, cast). */
  elementwise?: true;
  /** Index arithmetic on its input (reshape, permute, expand, slice, pad): never copied. */
  movement?: true;
  cost: CostRule;
}

const OPS: Record<OpKind, OpClass> = {
  input: { role: "input", cost: "free" },
  const: { role: "map", cost: "free" },
  iota: { role: "map", cost: "free" },
  random: { role: "map", cost: "dear" },
  unary: { role: "map", elementwise: true, cost: "arith" },
  binary: { role: "map", elementwise: true, cost: "arith" },
  where: { role: "map", elementwise: true, cost: "arith" },
  cast: { role: "map", elementwise: true, cost: "arith" },
  reshape: { role: "map", movement: true, cost: "view" },
  permute: { role: "map", movement: true, cost: "view" },
  expand: { role: "map", movement: true, cost: "view" },
  slice: { role: "map", movement: true, cost: "view" },
  pad: { role: "map", movement: true, cost: "view" },
  gather: { role: "map", cost: "dear" },
  reduce: { role: "reduce", cost: "free" },
  matmul: { role: "matmul", cost: "free" },
  scatterAdd: { role: "special", cost: "free" },
  svd: { role: "special", cost: "free" },
  qr: { role: "special", cost: "free" },
  topkMask: { role: "special", cost: "free" },
  quantize: { role: "special", cost: "free" },
  quantScale: { role: "special", cost: "free" },
};

export const roleOf = (kind: OpKind): OpRole => OPS[kind].role;

export function isMap(node: Node): boolean {
  return OPS[node.op.kind].role === "map";
}

export const isSpecial = (kind: OpKind): boolean => OPS[kind].role === "special";

/** A kernel anchor: a reduce, a matmul or a special op. */
export const isAnchor = (kind: OpKind): boolean => {
  const role = OPS[kind].role;
  return role === "reduce" || role === "matmul" || role === "special";
};

export const isElementwise = (kind: OpKind): boolean => OPS[kind].elementwise === true;

export const isMovement = (kind: OpKind): boolean => OPS[kind].movement === true;

/** Elementwise or a reshape: the value at an element is computed from its inputs at that element. */
export const keepsElement = (kind: OpKind): boolean =>
  OPS[kind].elementwise === true || kind === "reshape";

/** Cost a node's inlined subgraph is capped at. */
const COST_CAP = 100;

/**
 * Arithmetic a node costs when inlined, counting its inlined subgraph (capped): movement and
 * leaves are free, transcendental and random ops dear. Under 4 means cheap to recompute.
 */
export function costs(graph: Graph, needed: readonly number[]): Map<number, number> {
  const cost = new Map<number, number>();
  for (const id of needed) {
    const n = graph.node(id);
    let c: number;
    switch (OPS[n.op.kind].cost) {
      case "free":
        c = 0;
        break;
      case "view":
        c = cost.get(n.inputs[0]!)!;
        break;
      case "arith":
        c = 1 + n.inputs.reduce((s, i) => s + cost.get(i)!, 0);
        break;
      case "dear":
        c = 8;
        break;
    }
    cost.set(id, Math.min(c, COST_CAP));
  }
  return cost;
}
