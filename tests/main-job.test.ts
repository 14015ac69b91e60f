// The README's main job (`npm start` = dist/scripts/main-job.js) end to end at a tiny size: both
// runs happen in order, the fine-tune starts from the pretraining run's weights, and the summary
// reports accuracy before and after and both plans' memory. (The full-size run takes minutes; its
// numbers are in the README.)
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { root } from "./helpers.js";

describe("npm start (the main job)", () => {
  it(
    "pretrains, fine-tunes from the pretrained weights, and prints accuracy and memory",
    { timeout: 300_000 },
    () => {
      const runs = mkdtempSync(join(tmpdir(), "lrk-main-job-"));
      const r = spawnSync(
        process.execPath,
        [
          join(root, "dist", "scripts", "main-job.js"),
          ...["--runs", runs, "--steps", "3", "--batch", "8", "--device", "webgpu"],
          "--no-autotune",
        ],
        { cwd: root, encoding: "utf8", env: { ...process.env, NO_COLOR: "1" } },
      );
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/artificially reduced/);
      // the pretraining run, then the fine-tune from its final weights
      const pretrained = join(runs, "tiny_lm_pretrain", "final.safetensors");
      expect(existsSync(pretrained)).toBe(true);
      expect(existsSync(join(runs, "lora_finetune", "final.safetensors"))).toBe(true);
      expect(r.stderr.indexOf("training `tiny_lm_pretrain`")).toBeLessThan(
        r.stderr.indexOf("training `lora_finetune`"),
      );
      const summary = r.stdout.slice(r.stdout.indexOf("== summary"));
      for (const row of [
        "addition, after pretraining",
        "subtraction, before the fine-tune",
        "subtraction, after the LoRA fine-tune",
        "addition, with the subtraction adapters",
      ])
        expect(summary).toMatch(new RegExp(`${row} +\\d+\\.\\d%`));
      const lora = summary.match(
        /LoRA fine-tune \(([\d,]+) of ([\d,]+) weights trained\) +([\d.]+) (\w+)/,
      );
      const full = summary.match(/full fine-tune \(examples\/full_finetune\.lrk\) +([\d.]+) (\w+)/);
      expect(lora, summary).not.toBeNull();
      expect(full, summary).not.toBeNull();
      const ratio = Number(summary.match(/LoRA needs (\d+)% of full fine-tuning's memory/)![1]);
      expect(ratio).toBeGreaterThan(0);
      expect(ratio).toBeLessThan(100);
    },
  );
});
