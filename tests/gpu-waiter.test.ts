// GpuWaiter (runtime/gpu.ts) with a stand-in queue: a wait ends when the submitted work is done
// (also when that comes only after many polling turns), and a failed wait rejects instead of
// polling forever. (Its CPU cost is measured by bench/step-cpu.ts, not here.)
import { describe, expect, it } from "vitest";
import { GpuWaiter } from "../runtime/gpu.js";

/** A device whose queue reports its work done after `turns` event-loop turns (or fails then). */
function queueDoneAfter(turns: number, fail = false): { device: GPUDevice; polls: () => number } {
  let polls = 0;
  const onSubmittedWorkDone = () =>
    new Promise<undefined>((resolve, reject) => {
      const poll = () => {
        if (++polls < turns) setImmediate(poll);
        else if (fail) reject(new Error("device lost"));
        else resolve(undefined);
      };
      setImmediate(poll);
    });
  return { device: { queue: { onSubmittedWorkDone } } as unknown as GPUDevice, polls: () => polls };
}

describe("GpuWaiter", () => {
  it("ends when the queue's work is done, after 50 polling turns", async () => {
    const { device, polls } = queueDoneAfter(50);
    await new GpuWaiter().wait(device);
    expect(polls()).toBe(50);
  });

  it("rejects when the queue's promise rejects", async () => {
    const { device } = queueDoneAfter(5, true);
    await expect(new GpuWaiter().wait(device)).rejects.toThrow("device lost");
  });
});
