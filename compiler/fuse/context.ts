// What every fusion attempt reads about the graph, computed once per `fuse` call (the attempts
// differ only in the nodes they force to be materialized).
import { dependencies, type Graph } from "../ir.js";
import { chainComponents } from "./chains.js";
import { costs, roleOf } from "./ops.js";

export interface FuseContext {
  graph: Graph;
  /** Every node the outputs depend on, increasing (a topological order). */
  needed: number[];
  neededSet: ReadonlySet<number>;
  /** node → the needed nodes reading it (each once), increasing. */
  consumers: ReadonlyMap<number, number[]>;
  /** node → what recomputing it inlined costs (see `costs`). */
  cost: ReadonlyMap<number, number>;
  /** The reduces and matmuls (nodes that may start an epilogue chain), increasing. */
  chainAnchors: number[];
  /**
   * node → the chain anchors whose chains can affect its own or each other's, increasing (see
   * `chainComponents`; found with the entry's outputs, and valid with more nodes forced).
   */
  anchorsNear: (id: number) => readonly number[];
}

export function analyze(graph: Graph, outputs: readonly number[]): FuseContext {
  const needed = dependencies(graph, outputs);
  const consumers = new Map<number, number[]>();
  for (const id of needed) consumers.set(id, []);
  // A node reading one input twice (x * x) is its consumer once. Needed nodes come in increasing
  // order, so a repeat is the list's last entry: no set per node.
  for (const id of needed)
    for (const i of graph.node(id).inputs) {
      const list = consumers.get(i)!;
      if (list[list.length - 1] !== id) list.push(id);
    }
  const chainAnchors = needed.filter((id) => {
    const role = roleOf(graph.node(id).op.kind);
    return role === "reduce" || role === "matmul";
  });
  const anchorsNear = chainComponents({ graph, needed, consumers, chainAnchors }, new Set(outputs));
  return {
    graph,
    needed,
    neededSet: new Set(needed),
    consumers,
    cost: costs(graph, needed),
    chainAnchors,
    anchorsNear,
  };
}
