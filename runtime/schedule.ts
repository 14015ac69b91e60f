// Learning-rate schedules: the factor every optimizer's `lr` is multiplied by at a 1-based step.
import type { Schedule } from "../compiler/program.js";

export function lrFactor(schedule: Schedule, step: number, steps: number): number {
  const { warmup, minRatio } = schedule;
  if (warmup > 0 && step <= warmup) return step / warmup;
  const progress = steps > warmup ? Math.min(1, (step - warmup) / (steps - warmup)) : 1;
  switch (schedule.kind) {
    case "cosine":
      return minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress));
    case "linear":
      return minRatio + (1 - minRatio) * (1 - progress);
    case "constant":
      return 1;
  }
}
