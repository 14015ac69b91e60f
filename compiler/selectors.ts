// Selectors over dotted paths (`blocks.*.attn.{q, v}`, `**`, `blocks[0..3].mlp.*`).
// A selector matches a path when its components match all of the path (`exact`) or a leading
// part of it ending at a component boundary (`prefix`: `blocks.0` selects everything below).
import type * as A from "../language/ast.js";

type Components = readonly string[];

function patternRegex(pattern: string): RegExp {
  const body = pattern
    .split("*")
    .map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join("[^.]*");
  return new RegExp(`^${body}$`);
}

function inRange(index: number, ranges: A.IndexRange[]): boolean {
  return ranges.some((r) => {
    if (r.start === undefined && r.end === undefined) return true;
    const lo = r.start ?? 0;
    if (r.end === undefined) return index >= lo;
    return r.inclusive ? index >= lo && index <= r.end : index >= lo && index < r.end;
  });
}

/** Every position in `path` where matching `segments` from position `from` can end. */
function ends(segments: readonly A.Segment[], path: Components, from: number): Set<number> {
  let positions = new Set([from]);
  for (const segment of segments) {
    const next = new Set<number>();
    for (const at of positions) {
      switch (segment.kind) {
        case "Glob":
          for (let j = at; j <= path.length; j++) next.add(j);
          break;
        case "Alternatives":
          for (const option of segment.options)
            for (const e of ends(option.segments, path, at)) next.add(e);
          break;
        case "Pattern": {
          const component = path[at];
          if (component === undefined || !patternRegex(segment.pattern).test(component)) break;
          if (!segment.index) {
            next.add(at + 1);
            break;
          }
          const index = path[at + 1];
          if (index !== undefined && /^\d+$/.test(index) && inRange(Number(index), segment.index))
            next.add(at + 2);
          break;
        }
      }
    }
    positions = next;
    if (positions.size === 0) break;
  }
  return positions;
}

export function matches(selector: A.Selector, path: string, mode: "exact" | "prefix"): boolean {
  const components = path === "" ? [] : path.split(".");
  const found = ends(selector.segments, components, 0);
  if (mode === "exact") return found.has(components.length);
  return [...found].some((e) => e > 0 || components.length === 0);
}

/** The distinct paths a selector list matches among `paths`, before any `where` filter. */
export function matching(
  list: A.SelectorList,
  paths: readonly string[],
  mode: "exact" | "prefix",
): string[] {
  return paths.filter((p) => list.selectors.some((s) => matches(s, p, mode)));
}
