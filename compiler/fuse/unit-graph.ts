// The groups as a graph of units while row kernels form: a unit is a group or a cluster of groups
// contracted into one kernel, an edge goes from a unit to the units reading its outputs. The units
// keep a topological order as they contract, so whether a path joins two units is a search among
// the units between them in that order, not over the rest of the graph.
import type { KernelGroup } from "./types.js";

export class UnitGraph {
  /** group → the unit it belongs to (a unit is named by its first group) */
  private readonly unit: number[];
  /** unit → its groups, increasing */
  private readonly members = new Map<number, number[]>();
  /** unit → the groups reading its outputs (with repeats), computed when first needed */
  private readonly readingGroups = new Map<number, number[]>();
  /** unit → its position in a topological order of the units */
  private readonly pos: number[];
  /** position → the unit there, or -1 */
  private readonly at: number[];

  constructor(
    private readonly groups: readonly KernelGroup[],
    /** node → the groups that read it */
    private readonly readers: ReadonlyMap<number, readonly number[]>,
  ) {
    this.unit = groups.map((_, i) => i);
    groups.forEach((_, i) => this.members.set(i, [i]));
    const order = this.topologicalOrder((u) => u);
    if (!order) throw new Error("fuse: a cycle among row kernels");
    this.at = order;
    this.pos = new Array<number>(groups.length);
    order.forEach((u, p) => (this.pos[u] = p));
  }

  unitOf(group: number): number {
    return this.unit[group]!;
  }

  membersOf(u: number): readonly number[] {
    return this.members.get(u)!;
  }

  /** The units reading an output of unit `u`, `u` excluded. */
  succ(u: number): Set<number> {
    let groups = this.readingGroups.get(u);
    if (!groups) {
      groups = [];
      for (const gi of this.members.get(u)!)
        for (const o of this.groups[gi]!.outputs) groups.push(...(this.readers.get(o) ?? []));
      this.readingGroups.set(u, groups);
    }
    const out = new Set<number>();
    for (const j of groups) out.add(this.unit[j]!);
    out.delete(u);
    return out;
  }

  /**
   * A path from unit `from` to unit `to` through at least one other unit. Units after `to` in
   * the topological order cannot reach it: the search stays between the two.
   */
  longPath(from: number, to: number): boolean {
    const limit = this.pos[to]!;
    if (this.pos[from]! > limit) return false;
    const stack = [...this.succ(from)].filter((x) => x !== to && this.pos[x]! < limit);
    const seen = new Set(stack);
    while (stack.length) {
      const x = stack.pop()!;
      for (const y of this.succ(x)) {
        if (y === to) return true;
        if (!seen.has(y) && y !== from && this.pos[y]! < limit) {
          seen.add(y);
          stack.push(y);
        }
      }
    }
    return false;
  }

  /**
   * Contracts unit `j` into unit `u` (whose groups become `cluster`), when no long path joins
   * them either way. The merged unit takes a place in the order between the units of the span
   * from the earlier of the two to the later that must precede it and those reachable from the
   * earlier one, which must follow it.
   */
  contract(u: number, j: number, cluster: readonly number[]): void {
    const [first, second] = this.pos[u]! < this.pos[j]! ? [u, j] : [j, u];
    const a = this.pos[first]!;
    const b = this.pos[second]!;
    const after = new Set<number>(); // units strictly between reachable from `first`
    const stack = [first];
    while (stack.length)
      for (const y of this.succ(stack.pop()!))
        if (this.pos[y]! < b && !after.has(y)) {
          after.add(y);
          stack.push(y);
        }
    const span: number[] = [];
    for (let p = a + 1; p < b; p++) {
      const x = this.at[p]!;
      if (x >= 0 && !after.has(x)) span.push(x);
    }
    span.push(u);
    for (let p = a + 1; p < b; p++) {
      const x = this.at[p]!;
      if (x >= 0 && after.has(x)) span.push(x);
    }
    for (let p = a; p <= b; p++) this.at[p] = -1;
    span.forEach((x, k) => {
      this.at[a + k] = x;
      this.pos[x] = a + k;
    });
    for (const c of cluster) this.unit[c] = u;
    this.members.set(u, [...cluster]);
    this.members.set(j, []);
    this.readingGroups.delete(u);
    this.readingGroups.delete(j);
  }

  /**
   * The units in a topological order, each at the position of its last member where it can be
   * (of the units whose producers are all placed, the one whose last member comes first).
   */
  order(): number[] {
    const order = this.topologicalOrder((u) => Math.max(...this.members.get(u)!));
    if (!order) throw new Error("fuse: a cycle among row kernels");
    return order;
  }

  /** Kahn's algorithm over the units, taking the ready unit of least `key` first (keys distinct). */
  private topologicalOrder(key: (u: number) => number): number[] | undefined {
    const units = [...new Set(this.unit)];
    const succs = new Map(units.map((u) => [u, this.succ(u)]));
    const waiting = new Map<number, number>(units.map((u) => [u, 0]));
    for (const u of units) for (const v of succs.get(u)!) waiting.set(v, waiting.get(v)! + 1);
    const ready = new MinHeap();
    for (const u of units) if (waiting.get(u) === 0) ready.push(key(u), u);
    const out: number[] = [];
    while (ready.size) {
      const u = ready.pop();
      out.push(u);
      for (const v of succs.get(u)!) {
        const left = waiting.get(v)! - 1;
        waiting.set(v, left);
        if (left === 0) ready.push(key(v), v);
      }
    }
    return out.length === units.length ? out : undefined;
  }
}

/** A binary heap of values ordered by numeric keys, least first. */
class MinHeap {
  private readonly keys: number[] = [];
  private readonly values: number[] = [];

  get size(): number {
    return this.keys.length;
  }

  push(key: number, value: number): void {
    let i = this.keys.length;
    this.keys.push(key);
    this.values.push(value);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.keys[parent]! <= key) break;
      this.keys[i] = this.keys[parent]!;
      this.values[i] = this.values[parent]!;
      i = parent;
    }
    this.keys[i] = key;
    this.values[i] = value;
  }

  pop(): number {
    const top = this.values[0]!;
    const key = this.keys.pop()!;
    const value = this.values.pop()!;
    const n = this.keys.length;
    if (n === 0) return top;
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= n) break;
      if (child + 1 < n && this.keys[child + 1]! < this.keys[child]!) child++;
      if (this.keys[child]! >= key) break;
      this.keys[i] = this.keys[child]!;
      this.values[i] = this.values[child]!;
      i = child;
    }
    this.keys[i] = key;
    this.values[i] = value;
    return top;
  }
}
