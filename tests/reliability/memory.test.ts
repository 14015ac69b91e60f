// A program too large for the machine's memory (issue 10: a 28 GiB plan passed `check`, then
// died with `Array buffer allocation failed` on the CPU, exit 2, or `std::bad_alloc` on WebGPU):
// `check`, `train` and `eval` refuse it up front with E0604 at the train block's name, giving the
// figure needed and the figure available, before anything is allocated; a program that fits
// still trains.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkMemory, hostMemory, loadPlans } from "../../cli/target.js";
import { CpuDevice } from "../../runtime/device.js";
import { WebGpuDevice } from "../../runtime/webgpu-device.js";
import { interpreterBytes, MemoryLimitError } from "../../compiler/memory.js";
import { compile } from "../../compiler/compile.js";
import { SourceFile } from "../../language/source.js";
import { readRepoFile, root } from "../helpers.js";

const lrkc = join(root, "bin", "lrkc.js");
const dir = mkdtempSync(join(tmpdir(), "lrk-memory-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 2 ** 20;

/**
 * `layers` Linear(width, width) layers at batch `batch`. Each tensor stays within lavapipe's
 * 128 MiB binding limit (so WebGPU plans it, and E0602 does not come first) and the model within
 * lrk's 2^31 elements: the size comes from the number of layers.
 */
function program(layers: number, options: { width?: number; batch?: number } = {}): string {
  return `import std.nn.{Linear}
import std.optim.{adamw}

data moons = std.data.two_moons(n: 200000, seed: 3)

model Net(layers: int, width: int) {
  inp = Linear(2, width)
  blocks[layers] {
    l = Linear(width, width)
  }
  out = Linear(width, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] {
    let h = gelu(inp(x))
    for b in blocks {
      h = gelu(b.l(h))
    }
    return out(h)
  }
}

train big {
  model Net(layers: ${layers}, width: ${options.width ?? 1024})
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with adamw(lr: 1e-2)
  steps 2
  batch ${options.batch ?? 32768}
  eval every 1 on moons.valid
}
`;
}

// Each layer saves at least two [32768, 1024] f32 activations (128 MiB each): enough layers that
// even `check`'s lower estimate is over this machine's memory, whatever the machine.
const hugeLayers = Math.ceil((1.25 * totalmem()) / (256 * MiB)) + 2;
const huge = join(dir, "huge.lrk");
writeFileSync(huge, program(hugeLayers));
const small = join(dir, "small.lrk");
writeFileSync(small, program(2, { width: 16, batch: 32 }));

function lrk(args: string[]) {
  const started = performance.now();
  const result = spawnSync(process.execPath, [lrkc, ...args], {
    cwd: dir,
    encoding: "utf8",
    timeout: 240_000,
    env: { ...process.env, XDG_RUNTIME_DIR: join(dir, "xdg") },
  });
  return { ...result, seconds: (performance.now() - started) / 1000 };
}

/** E0604 at `train big`, with both figures and a fix; never a crash or "a bug in lrkc". */
function expectRefused(result: ReturnType<typeof lrk>): void {
  expect(result.signal, result.stderr).toBeNull();
  expect(result.status, result.stderr).toBe(1);
  expect(result.stderr).toMatch(
    /huge\.lrk:21:7: error\[E0604\]: this program needs about [\d.]+ GiB/,
  );
  expect(result.stderr).toMatch(/more than the [\d.]+ GiB of memory this machine has/);
  expect(result.stderr).toMatch(/help: lower the batch size/);
  expect(result.stderr).not.toMatch(/bug in lrkc|allocation failed|bad_alloc|at .*\.js:\d+/);
  // refused before allocating: no buffer of hundreds of GiB was ever filled
  expect(result.seconds).toBeLessThan(120);
}

describe("a program too large for this machine", () => {
  it("fails `lrkc check` with E0604", () => {
    expectRefused(lrk(["check", huge]));
  });

  it("is refused by `lrkc train --device cpu` before training", () => {
    const out = join(dir, "cpu");
    const result = lrk(["train", huge, "--device", "cpu", "--out", out]);
    expectRefused(result);
    expect(result.stderr).toMatch(/intermediate values on the CPU interpreter/);
    expect(existsSync(join(out, "checkpoint.safetensors"))).toBe(false);
  });

  it("is refused by `lrkc train --device webgpu` before loading its plans", () => {
    const result = lrk(["train", huge, "--device", "webgpu", "--out", join(dir, "gpu")]);
    expectRefused(result);
    // checked before autotuning too, which runs kernels on buffers of the program's sizes
    expect(result.stderr).not.toMatch(/tuning \d+ matmul/);
  });

  it("is refused before the run folder is touched: --force does not lose the run it held", () => {
    const out = join(dir, "kept");
    const first = lrk(["train", small, "--device", "cpu", "--out", out]);
    expect(first.status, first.stderr).toBe(0);
    for (const device of ["cpu", "webgpu"]) {
      const result = lrk(["train", huge, "--device", device, "--out", out, "--force"]);
      expectRefused(result);
      expect(existsSync(join(out, "final.safetensors")), device).toBe(true);
      expect(existsSync(join(out, "metrics.jsonl")), device).toBe(true);
    }
  });

  it("is refused by loadPlans on WebGPU from its plans' peakBytes, before any buffer exists", async () => {
    // (`lrkc train` refuses this one earlier, from the cheaper lower bound that `check` uses)
    const device = await WebGpuDevice.open();
    try {
      const { compiled } = compile(new SourceFile(huge, program(hugeLayers)));
      const loading = loadPlans(device, compiled!.program, { autotune: true });
      await expect(loading).rejects.toThrow(MemoryLimitError);
      await expect(loading).rejects.toThrow(
        /`peakBytes` in plan\.json.*GiB of memory this machine has/,
      );
      expect(() => device.plan(compiled!.program.step)).toThrow(/no plan was loaded/);
    } finally {
      device.destroy();
    }
  }, 120_000);

  it("is refused by `lrkc eval --device cpu`", () => {
    expectRefused(lrk(["eval", huge, "--device", "cpu"]));
  });
});

describe("a program that fits", () => {
  it("passes check and trains on the CPU and on WebGPU", () => {
    const checked = lrk(["check", small]);
    expect(checked.status, checked.stderr).toBe(0);
    for (const device of ["cpu", "webgpu"]) {
      const trained = lrk(["train", small, "--device", device, "--out", join(dir, `ok-${device}`)]);
      expect(trained.status, trained.stderr).toBe(0);
      expect(trained.stderr).not.toMatch(/E0604|warning: this program needs/);
    }
  });

  it("every example fits the estimates by far", () => {
    // the bounds leave today's programs alone: none comes near a gigabyte
    for (const name of ["mlp", "tiny_lm_pretrain", "lora_finetune", "galore_pretrain"]) {
      const file = new SourceFile(`examples/${name}.lrk`, readRepoFile(`examples/${name}.lrk`));
      const { compiled } = compile(file);
      const programs = [compiled!.program.initProgram, compiled!.program.step];
      expect(interpreterBytes(programs, true), name).toBeLessThan(2 ** 30);
    }
  });
});

describe("a CPU run", () => {
  it("is not refused for a tensor over WebGPU's default buffer limits (it has no plan.json)", async () => {
    // one 8200 × 8200 weight is 269 MB, over the portable 256 MiB buffer (a tensor over one
    // 128 MiB binding is bound in chunks now): planned for WebGPU this was E0602 on
    // `--device cpu`, whose memory holds it easily
    const text = program(1, { width: 8200, batch: 4 });
    const { compiled } = compile(new SourceFile("wide.lrk", text));
    await expect(
      loadPlans(new CpuDevice(), compiled!.program, { autotune: false }),
    ).resolves.toBeUndefined();
    const narrow = compile(new SourceFile("narrow.lrk", program(1, { width: 64, batch: 4 })));
    const plan = await loadPlans(new CpuDevice(), narrow.compiled!.program, { autotune: false });
    expect(plan?.peakBytes).toBeGreaterThan(0);
  });
});

describe("the estimates", () => {
  it("count float64 values twice as large on cpu64", () => {
    const { compiled } = compile(new SourceFile("small.lrk", program(2, { width: 16, batch: 32 })));
    const programs = [compiled!.program.initProgram, compiled!.program.step];
    const f32 = interpreterBytes(programs, false);
    const f64 = interpreterBytes(programs, true);
    expect(f32).toBeGreaterThan(0);
    expect(f64).toBeGreaterThan(1.5 * f32);
  });

  it("refuse over the machine's memory and warn over its free memory", () => {
    const host = hostMemory();
    expect(host.total).toBeLessThanOrEqual(totalmem());
    expect(host.free).toBeLessThanOrEqual(host.total);
    const lines: string[] = [];
    expect(() =>
      checkMemory(host.total + 1, "a test", "make it smaller", (l) => lines.push(l)),
    ).toThrow(MemoryLimitError);
    checkMemory(1024, "a test", "make it smaller", (l) => lines.push(l));
    expect(lines).toEqual([]);
    if (host.total - host.free > 64 * MiB) {
      checkMemory(host.free + 32 * MiB, "a test", "make it smaller", (l) => lines.push(l));
      expect(lines[0]).toMatch(
        /^warning: this program needs about .* more than the .* of memory free now/,
      );
    }
  });
});
