// The groups as a graph of units while row kernels form: a unit is a group or a cluster of groups
// contracted into one kernel, an edge goes from a unit to the units reading its outputs.
import type { KernelGroup } from "./types.js";

export class UnitGraph {
  /** group → the unit it belongs to (a unit is named by its first group) */
  private readonly unit: number[];
  /** unit → its groups, increasing */
  private readonly members = new Map<number, number[]>();
  private readonly succCache = new Map<number, Set<number>>();

  constructor(
    private readonly groups: readonly KernelGroup[],
    /** node → the groups that read it */
    private readonly readers: ReadonlyMap<number, readonly number[]>,
  ) {
    this.unit = groups.map((_, i) => i);
    groups.forEach((_, i) => this.members.set(i, [i]));
  }

  unitOf(group: number): number {
    return this.unit[group]!;
  }

  membersOf(u: number): readonly number[] {
    return this.members.get(u)!;
  }

  /** The units reading an output of unit `u`, `u` excluded. */
  succ(u: number): Set<number> {
    let out = this.succCache.get(u);
    if (!out) {
      out = new Set<number>();
      for (const gi of this.members.get(u)!)
        for (const o of this.groups[gi]!.outputs)
          for (const j of this.readers.get(o) ?? []) out.add(this.unit[j]!);
      out.delete(u);
      this.succCache.set(u, out);
    }
    return out;
  }

  /** A path from unit `from` to unit `to` through at least one other unit. */
  longPath(from: number, to: number): boolean {
    const stack = [...this.succ(from)].filter((x) => x !== to);
    const seen = new Set(stack);
    while (stack.length) {
      const x = stack.pop()!;
      for (const y of this.succ(x)) {
        if (y === to) return true;
        if (!seen.has(y) && y !== from) {
          seen.add(y);
          stack.push(y);
        }
      }
    }
    return false;
  }

  /** Contracts unit `j` into unit `u` (whose groups become `cluster`). */
  contract(u: number, j: number, cluster: readonly number[]): void {
    for (const c of cluster) this.unit[c] = u;
    this.members.set(u, [...cluster]);
    this.members.set(j, []);
    this.succCache.clear();
  }

  /**
   * The units in a topological order, each at the position of its last member where it can be
   * (of the units whose producers are all placed, the one whose last member comes first).
   */
  order(): number[] {
    const units = [...new Set(this.unit)];
    const lastOf = (u: number) => Math.max(...this.members.get(u)!);
    const preds = new Map<number, Set<number>>(units.map((u) => [u, new Set<number>()]));
    for (const u of units) for (const v of this.succ(u)) preds.get(v)!.add(u);
    const done = new Set<number>();
    const out: number[] = [];
    while (done.size < units.length) {
      let best: number | undefined;
      for (const u of units)
        if (!done.has(u) && [...preds.get(u)!].every((p) => done.has(p)))
          if (best === undefined || lastOf(u) < lastOf(best)) best = u;
      if (best === undefined) throw new Error("fuse: a cycle among row kernels");
      done.add(best);
      out.push(best);
    }
    return out;
  }
}
