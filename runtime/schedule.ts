// Learning-rate schedules: the factor every optimizer's `lr` is multiplied by at a 1-based step.
import type { Value } from "../compiler/values.js";

export function lrFactor(schedule: Value | undefined, step: number, steps: number): number {
  if (!schedule || schedule.kind !== "schedule") return 1;
  const warmup = schedule.args.get("warmup") ?? 0;
  const minRatio = schedule.args.get("min_ratio") ?? 0;
  if (warmup > 0 && step <= warmup) return step / warmup;
  const progress = steps > warmup ? Math.min(1, (step - warmup) / (steps - warmup)) : 1;
  switch (schedule.name) {
    case "cosine":
      return minRatio + (1 - minRatio) * 0.5 * (1 + Math.cos(Math.PI * progress));
    case "linear":
      return minRatio + (1 - minRatio) * (1 - progress);
    default:
      return 1;
  }
}
