// Pooled optimizer states: `state M = pooled(zeros_like(param), active) refresh every N`. A
// method such as FRUGAL's block variant keeps Adam's moments only for the tensors active in the
// current window; the others take a stateless step. `active` is a per-tensor condition the host
// decides (it depends only on the step, constants, `group` and seeded uniform draws: the step
// conditions of step-conditions.ts), and the state holds a value only at the steps where it
// holds: its contents restart from the initializer at every refresh, and its tensor's activity
// may change only there (checked over the run's steps while compiling). Nothing may read a
// pooled state where its tensor is inactive: every use reaches the rest of the step only through
// the taken branch of a selection on the same condition (`if active { … }` or `where(active, …)`),
// which `unguardedRead` proves on the step graph. A device may then keep the state only while
// its tensor is active (the WebGPU device does: runtime/webgpu-device.ts): together the pooled
// states of a run need at most `pooledBytes` at once.
import type * as A from "../language/ast.js";
import { error, type Location } from "../language/diagnostics.js";
import type { SourceFile } from "../language/source.js";
import { numel, type Graph } from "./ir.js";
import type { Frame, Lowerer } from "./lower.js";
import type { StateInfo, StepCondition, StepProgram } from "./program.js";
import type { Resolver } from "./resolve.js";
import { compileCondition, fingerprint, stepOnly } from "./step-conditions.js";

/** `pooled(init, active)` written as a state's initializer: its two arguments. */
export function pooledInit(e: A.Expr): { init: A.Expr; active: A.Expr } | undefined {
  if (e.kind !== "Call" || e.callee.kind !== "NameExpr" || e.callee.name !== "pooled")
    return undefined;
  const [init, active] = e.args;
  if (e.args.length !== 2 || init!.name || active!.name) return undefined;
  return { init: init!.value, active: active!.value };
}

/**
 * The host condition of a `pooled` state, lowered in its initializer's frame; reports what
 * keeps it from being one (a condition known while compiling, one the host cannot decide, no
 * `refresh every`).
 */
export function pooledCondition(
  r: Resolver,
  lowerer: Lowerer,
  pooled: { active: A.Expr },
  frame: Frame,
  s: A.StateMember,
  file: SourceFile,
): (StepCondition & { at: Location }) | undefined {
  const at: Location = { file, span: pooled.active.span };
  const value = lowerer.expr(pooled.active, frame);
  if (!s.refreshEvery) {
    r.report(
      error("E0211", `the pooled state \`${s.name.name}\` needs \`refresh every N\``, at, {
        help: "a pooled state's tensor may become active only where its contents restart: add `refresh every period` after the initializer",
      }),
    );
    return undefined;
  }
  if (value.kind !== "tensor" || numel(value.shape) !== 1) {
    r.report(
      error(
        "E0211",
        `\`pooled\`'s second argument is whether this tensor holds the state at a step: a condition on \`step\`, found ${value.kind === "tensor" ? "a tensor of many elements" : "a value known while compiling"}`,
        at,
        {
          help: "write a condition on `step`, `group.index` and constants, such as `floor((step - 1) / period) % group.size == group.index`; a state every tensor keeps needs no `pooled`",
        },
      ),
    );
    return undefined;
  }
  const graph = lowerer.b.graph;
  if (!stepOnly(graph, value.node)) {
    r.report(
      error(
        "E0211",
        `whether the pooled state \`${s.name.name}\` is held must be decided on the host, before each step`,
        at,
        {
          help: "the condition may read only `step`, constants, `group.index`, `group.size` and seeded draws (`uniform([n], seed: s, key: f(step))`), not gradients, parameters or states",
        },
      ),
    );
    return undefined;
  }
  return {
    key: fingerprint(graph, value.node),
    holds: compileCondition(graph, value.node),
    at,
  };
}

/**
 * Reports a pooled state read where its tensor may be inactive, or activated between refreshes
 * in a run of `steps` steps; true when there is neither.
 */
export function checkPooledStates(r: Resolver, step: StepProgram, steps: number): boolean {
  const read = unguardedRead(step);
  if (read) {
    const [owner, name] = read.state.name.split(":");
    r.report(
      error(
        "E0211",
        `the pooled state \`${name}\` of ${owner} is read where its tensor may be inactive (by \`${read.output}\`)`,
        read.state.pooled!.at,
        {
          notes: [
            {
              message:
                "a pooled state holds nothing while its condition is false, so every use must be selected by that condition",
            },
          ],
          help: "read it only inside `if ACTIVE { … }` or `where(ACTIVE, …, …)`, with ACTIVE the condition given to `pooled`",
        },
      ),
    );
    return false;
  }
  const { unrefreshed, tooLong } = pooledBytes(step.states, steps);
  if (tooLong) {
    const first = step.states.find((x) => x.pooled)!;
    r.report(
      error(
        "E0211",
        `a run of ${steps} steps is too long to check its pooled states step by step (at most ${MAX_CHECKED.toLocaleString("en-US")} steps × pooled states)`,
        first.pooled!.at,
        { help: "train with fewer `steps` (or fewer pooled states)" },
      ),
    );
    return false;
  }
  if (unrefreshed) {
    const s = step.states.find((x) => x.name === unrefreshed.state)!;
    const [owner, name] = s.name.split(":");
    r.report(
      error(
        "E0211",
        `the pooled state \`${name}\` of ${owner} becomes active at step ${unrefreshed.step}, which is not one of its refresh steps`,
        s.pooled!.at,
        {
          help: `its tensor's condition may change only where the state restarts (steps 1, ${(s.period ?? 0) + 1}, …): make the condition depend on \`floor((step - 1) / period)\``,
        },
      ),
    );
    return false;
  }
  return true;
}

/** The scalar a selection's condition broadcasts (casts, reshapes and expands of it are it). */
function bare(graph: Graph, id: number): number {
  for (;;) {
    const n = graph.node(id);
    const moves = n.op.kind === "cast" || n.op.kind === "reshape" || n.op.kind === "expand";
    if (moves && numel(graph.shape(n.inputs[0]!)) === 1) id = n.inputs[0]!;
    else return id;
  }
}

/**
 * Every output of every entry reads a pooled state only through the taken branch of a selection
 * on its condition (or is that state's own new value). Returns the first state read elsewhere
 * and the output reading it.
 */
export function unguardedRead(step: StepProgram): { state: StateInfo; output: string } | undefined {
  const pooled = step.states.filter((s) => s.pooled);
  if (pooled.length === 0) return undefined;
  const { graph } = step;
  const byInput = new Map<number, number>();
  for (const input of step.inputs) {
    const k = pooled.findIndex((s) => `state:${s.name}` === input.name);
    if (k >= 0) byInput.set(input.node, k);
  }
  // the pooled states (by index) whose value may reach each node unselected
  const reads: (Set<number> | undefined)[] = [];
  const keys = new Map<number, string>();
  const keyOf = (id: number) => {
    let key = keys.get(id);
    if (key === undefined) keys.set(id, (key = fingerprint(graph, bare(graph, id))));
    return key;
  };
  for (const n of graph.nodes) {
    const own = byInput.get(n.id);
    if (own !== undefined) {
      reads.push(new Set([own]));
      continue;
    }
    let out: Set<number> | undefined;
    n.inputs.forEach((i, slot) => {
      let from = reads[i];
      if (!from) return;
      // where(c, a, b): a is read only where c holds, so a pooled state on c reaches no further
      if (n.op.kind === "where" && slot === 1) {
        const key = keyOf(n.inputs[0]!);
        from = new Set([...from].filter((k) => pooled[k]!.pooled!.key !== key));
      }
      for (const k of from) (out ??= new Set()).add(k);
    });
    reads.push(out);
  }
  for (const entry of step.entries)
    for (const o of entry.outputs)
      for (const k of reads[o.node] ?? []) {
        if (o.name === `state:${pooled[k]!.name}`) continue; // its own new value
        return { state: pooled[k]!, output: o.name };
      }
  return undefined;
}

/** The most (step, pooled state) pairs `pooledBytes` evaluates: a few seconds' work. */
export const MAX_CHECKED = 50_000_000;

/**
 * The most bytes the pooled states hold at once over steps 1 … `steps` (f32 elements, each
 * state in a buffer of its own while held), and the first step where a tensor becomes active without a refresh of its
 * state (its contents would be lost), if any.
 */
export function pooledBytes(
  states: readonly StateInfo[],
  steps: number,
): { bytes: number; unrefreshed?: { state: string; step: number }; tooLong?: true } {
  const pooled = states.filter((s) => s.pooled);
  if (pooled.length === 0) return { bytes: 0 };
  // every tensor's condition at every step: beyond this many, compiling would seem to hang
  if (steps * pooled.length > MAX_CHECKED) return { bytes: 0, tooLong: true };
  let most = 0;
  const was = pooled.map(() => false);
  for (let t = 1; t <= steps; t++) {
    let bytes = 0;
    for (let k = 0; k < pooled.length; k++) {
      const s = pooled[k]!;
      const now = s.pooled!.holds(t);
      const refreshed = s.period !== undefined && (t - 1) % s.period === 0;
      if (now && !was[k] && !refreshed)
        return { bytes: most, unrefreshed: { state: s.name, step: t } };
      was[k] = now;
      if (now) bytes += stateBytes(s);
    }
    most = Math.max(most, bytes);
  }
  return { bytes: most };
}

/** A pooled state's bytes while it is held: its f32 elements (a buffer is at least a word). */
export function stateBytes(s: Pick<StateInfo, "shape">): number {
  return Math.max(4, 4 * numel(s.shape));
}

/**
 * What a plan's buffers hold for pooled states: `full` bytes were every state kept, `held` the
 * most held at once over the run's steps (the WebGPU device keeps a 16-byte placeholder for each
 * of the others); undefined when the step has no pooled state.
 */
export function pooledPlanBytes(
  step: StepProgram,
  buffers: readonly { bytes: number; names: readonly string[] }[],
  steps: number,
): { full: number; held: number; states: number } | undefined {
  const names = new Set(step.states.filter((s) => s.pooled).map((s) => `state:${s.name}`));
  if (names.size === 0) return undefined;
  const full = buffers
    .filter((b) => b.names.some((n) => names.has(n)))
    .reduce((sum, b) => sum + b.bytes, 0);
  return { full, held: pooledBytes(step.states, steps).bytes, states: names.size };
}
