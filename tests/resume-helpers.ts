// Shared setup of the tests that stop a run and resume it: in process (a run stopped as Ctrl-C
// stops it, its checkpoint written to a run folder and read back) and through the command line
// (`lrkc train` killed without warning, then `--resume`). What each test asserts about the
// resumed run beyond "the same as the uninterrupted one" stays in the test.
import { spawn, spawnSync, type SpawnSyncReturns } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "vitest";
import type { Tensor } from "../compiler/program.js";
import type { Device } from "../runtime/device.js";
import { RunFolder } from "../runtime/run-folder.js";
import { readSafetensors } from "../runtime/safetensors.js";
import { train, type Run, type TrainResult } from "../runtime/trainer.js";
import { lrkcBin } from "./helpers.js";

/** Every tensor of `actual` equals `want`'s of the same name, bit for bit. */
export function expectSameTensors(
  actual: ReadonlyMap<string, Tensor>,
  want: ReadonlyMap<string, Tensor>,
): void {
  for (const [name, t] of want)
    expect(Array.from(actual.get(name)!.data), name).toEqual(Array.from(t.data));
}

export interface StoppedRun {
  /** The run trained through without a stop. */
  whole: TrainResult;
  /** The checkpoint the stopped run left, as read back from its run folder. */
  checkpoint: { step: number; store: Map<string, Tensor> };
  /** The run resumed from that checkpoint to the end. */
  resumed: TrainResult;
}

/**
 * Trains `run` through, then again stopped after `stopAfter` steps with its checkpoints written
 * to a fresh run folder (`floats: "F64"` keeps a float64 device's values exact), and resumes it
 * from the checkpoint read back. Checks that the run stopped, and its checkpoint is, at step
 * `stopAfter`, and that the resumed run's losses are the uninterrupted run's from there on.
 */
export async function stopAndResume(
  run: Run,
  device: Device,
  stopAfter: number,
  options: {
    floats?: "F64";
    /** Sees the stopped run's checkpoints as they are written. */
    onCheckpoint?: (step: number, store: ReadonlyMap<string, Tensor>) => void;
  } = {},
): Promise<StoppedRun> {
  const whole = await train(run, device);
  const dir = mkdtempSync(join(tmpdir(), "lrk-resume-"));
  try {
    const folder = new RunFolder(dir);
    let steps = 0;
    const stopped = await train(run, device, {
      shouldStop: () => ++steps === stopAfter,
      onCheckpoint: (s, store) => {
        options.onCheckpoint?.(s, store);
        folder.saveCheckpoint(s, store, {}, options.floats ? { floats: options.floats } : {});
      },
    });
    expect(stopped.step).toBe(stopAfter);
    const { step, store } = folder.loadCheckpoint(run.program);
    expect(step).toBe(stopAfter);
    const resumed = await train(run, device, { resume: { step, store } });
    expect(resumed.losses).toEqual(whole.losses.slice(stopAfter));
    return { whole, checkpoint: { step, store }, resumed };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Each step's loss in a run folder's metrics.jsonl, by step. */
export function stepLosses(out: string): Map<number, number> {
  const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter(Boolean);
  return new Map(
    lines
      .map((l) => JSON.parse(l) as { kind: string; step: number; loss: number })
      .filter((m) => m.kind === "step")
      .map((m) => [m.step, m.loss]),
  );
}

/**
 * `lrkc train a.lrk --device <device> --out out` on `text` twice, each in a fresh folder: once
 * through, once killed (SIGKILL, no warning) as soon as step `killAt` is logged and then run
 * again with `--resume`. Checks that both end well with the same step losses and the same
 * final.safetensors, bit for bit. Returns the step the resume started after (from its log), and
 * the uninterrupted run's final tensors.
 */
export async function killAndResume(
  text: string,
  device: string,
  killAt: number,
): Promise<{ after: number; resumed: SpawnSyncReturns<string>; final: Map<string, Tensor> }> {
  const args = ["train", "a.lrk", "--device", device, "--out", "out"];
  const whole = mkdtempSync(join(tmpdir(), "lrk-resume-cli-"));
  const cut = mkdtempSync(join(tmpdir(), "lrk-resume-cli-"));
  try {
    for (const dir of [whole, cut]) writeFileSync(join(dir, "a.lrk"), text);
    const r = spawnSync(process.execPath, [lrkcBin, ...args], { cwd: whole, encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    await new Promise<void>((resolve, reject) => {
      const child = spawn(process.execPath, [lrkcBin, ...args], { cwd: cut });
      const timer = setInterval(() => {
        try {
          if (stepLosses(join(cut, "out")).has(killAt)) child.kill("SIGKILL");
        } catch {
          // no metrics yet
        }
      }, 5);
      child.on("error", reject);
      child.on("close", () => {
        clearInterval(timer);
        resolve();
      });
    });
    const resumed = spawnSync(process.execPath, [lrkcBin, ...args, "--resume"], {
      cwd: cut,
      encoding: "utf8",
    });
    expect(resumed.status, resumed.stderr).toBe(0);
    const after = Number(/resuming after step (\d+)/.exec(resumed.stderr)?.[1]);
    expect([...stepLosses(join(cut, "out"))]).toEqual([...stepLosses(join(whole, "out"))]);
    const final = readSafetensors(join(whole, "out", "final.safetensors")).tensors;
    expectSameTensors(readSafetensors(join(cut, "out", "final.safetensors")).tensors, final);
    return { after, resumed, final };
  } finally {
    rmSync(whole, { recursive: true, force: true });
    rmSync(cut, { recursive: true, force: true });
  }
}
