// What the training loop needs from a device: run one entry of a graph on named inputs.
// The CPU device is the reference interpreter; the WebGPU device executes compiled kernel plans.
import { roundToHalf } from "./half.js";
import { evaluate, IndexOutOfRange } from "./interpreter.js";
import type { Entry, GraphProgram, Tensor } from "../compiler/program.js";

export type { Tensor };

export interface RunOptions {
  /**
   * The outputs the host needs now (default: all). A device may keep the others where they were
   * computed, returning tensors whose `data` can be read only after `sync`; feeding them back to
   * the same device costs nothing. A training step asks for its loss only.
   */
  read?: ReadonlySet<string>;
}

export interface Device {
  readonly name: string;
  /** Computes in float64 (`--device cpu64`): scalars are fed, and checkpoints kept, in float64. */
  readonly float64?: boolean;
  /** Runs `entry` of `program` (on WebGPU: of the plan loaded for it) on named inputs. */
  run(
    program: GraphProgram,
    entry: Entry,
    feeds: ReadonlyMap<string, Tensor>,
    options?: RunOptions,
  ): Promise<Map<string, Tensor>>;
  /** Makes the `data` of these tensors readable on the host (a no-op for host tensors). */
  sync?(tensors: Iterable<Tensor>): Promise<void>;
  /**
   * Before the step program runs at a 1-based step: a device that keeps pooled states only while
   * their tensors are active (StateInfo.pooled) allocates and frees them here.
   */
  prepareStep?(program: GraphProgram, step: number): Promise<void>;
}

export class CpuDevice implements Device {
  readonly name = "cpu (reference interpreter)";

  readonly float64: boolean;

  constructor(private readonly options: { float64?: boolean } = {}) {
    this.float64 = options.float64 ?? false;
  }

  async run(
    program: GraphProgram,
    entry: Entry,
    feeds: ReadonlyMap<string, Tensor>,
  ): Promise<Map<string, Tensor>> {
    const { graph } = program;
    const byNode = new Map<number, Tensor>();
    for (const input of program.inputs) {
      const value = feeds.get(input.name);
      if (value) byNode.set(input.node, input.storage === "f16" ? this.asHalf(value) : value);
    }
    let values: Map<number, Tensor>;
    try {
      values = evaluate(
        graph,
        byNode,
        entry.outputs.map((o) => o.node),
        this.options,
      );
    } catch (e) {
      throw e instanceof IndexOutOfRange ? e.atStep(feeds) : e;
    }
    return new Map(entry.outputs.map((o) => [o.name, values.get(o.node)!]));
  }

  private readonly halves = new WeakMap<Tensor, Tensor>();

  /**
   * A frozen tensor stored as f16 (compiler/half-storage.ts) as the WebGPU device holds it: its
   * values rounded to f16 once (per tensor fed: tensors are immutable once fed).
   */
  private asHalf(t: Tensor): Tensor {
    let half = this.halves.get(t);
    if (!half) {
      if (t.data instanceof Int32Array) return t;
      half = { shape: t.shape, data: roundToHalf(t.data) };
      this.halves.set(t, half);
    }
    return half;
  }
}
