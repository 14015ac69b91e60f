// The train block's `init_adapters` setting (issue 13): the adapters start from a PEFT folder or an
// adapters.safetensors named in the program, exactly as with `--init-adapters`, which replaces it
// with a note; a bad path is E0502 at the setting's line.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loraTinyLmProgram, lrkcBin } from "./helpers.js";

const lrkc = (...args: string[]) =>
  spawnSync(process.execPath, [lrkcBin, ...args], { encoding: "utf8", timeout: 120_000 });

/** The TinyLM LoRA program with `line` added to its train block (after `data`). */
const withSetting = (line: string) =>
  loraTinyLmProgram("tiny", 20).replace("  data arith\n", `  data arith\n  ${line}\n`);

describe("init_adapters (train-block setting)", () => {
  let dir: string;
  let run: string;
  let peft: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-init-adapters-"));
    const program = join(dir, "tiny.lrk");
    writeFileSync(program, loraTinyLmProgram("tiny", 20));
    run = join(dir, "run");
    const t = lrkc("train", program, "--device", "cpu", "--out", run);
    expect(t.status, t.stderr).toBe(0);
    peft = join(dir, "peft");
    expect(lrkc("export", run, "--peft", peft).status).toBe(0);
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const evalLoss = (program: string, ...args: string[]) => {
    const r = lrkc("eval", program, "--device", "cpu", "--batches", "2", "--json", ...args);
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout).result.loss as number;
  };
  const firstLoss = (program: string, out: string, ...args: string[]) => {
    const r = lrkc("train", program, "--device", "cpu", "--steps", "1", "--out", out, ...args);
    expect(r.status, r.stderr).toBe(0);
    return {
      loss: JSON.parse(readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n")[0]!)
        .loss as number,
      stderr: r.stderr,
    };
  };

  it("starts the adapters as --init-adapters does (eval and train), paths relative to the program", () => {
    const plain = join(dir, "tiny.lrk");
    // relative to the program's folder, not the working directory (the test runs from the repo)
    const fromPeft = join(dir, "from-peft.lrk");
    writeFileSync(fromPeft, withSetting('init_adapters "peft"'));
    const fromFile = join(dir, "from-file.lrk");
    writeFileSync(fromFile, withSetting('init_adapters "run/adapters.safetensors"'));

    const tuned = evalLoss(plain, "--weights", join(run, "final.safetensors"));
    expect(Math.abs(tuned - evalLoss(plain))).toBeGreaterThan(1e-3); // the adapters matter
    expect(evalLoss(fromPeft)).toBe(evalLoss(plain, "--init-adapters", peft));
    expect(evalLoss(fromPeft)).toBeCloseTo(tuned, 6);
    expect(evalLoss(fromFile)).toBeCloseTo(tuned, 6);
    // --weights replaces the block's starting point, its adapters included
    expect(evalLoss(fromPeft, "--weights", join(run, "final.safetensors"))).toBe(tuned);

    const flag = firstLoss(plain, join(dir, "t-flag"), "--init-adapters", peft);
    const setting = firstLoss(fromPeft, join(dir, "t-setting"));
    expect(setting.loss).toBe(flag.loss);
    expect(setting.stderr).not.toContain("replaces");
  }, 240_000);

  it("lrkc generate starts from it too (as from the run's final weights)", () => {
    const fromPeft = join(dir, "gen-peft.lrk");
    writeFileSync(fromPeft, withSetting('init_adapters "peft"'));
    const tokens = (program: string, ...args: string[]) => {
      const r = lrkc(
        "generate",
        program,
        "--ids",
        "1,10,2",
        "--max-tokens",
        "4",
        "--temperature",
        "1",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--json",
        ...args,
      );
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout).result.tokens as number[];
    };
    const tuned = tokens(join(dir, "tiny.lrk"), "--weights", join(run, "final.safetensors"));
    expect(tokens(fromPeft)).toEqual(tuned);
    expect(tokens(join(dir, "tiny.lrk"))).not.toEqual(tuned); // the adapters change the draws
  }, 120_000);

  it("--init-adapters replaces the setting, with a note", () => {
    const other = join(dir, "other.lrk");
    // the setting names a file that does not exist: the flag's replaces it, so it is never read
    writeFileSync(other, withSetting('init_adapters "nowhere"'));
    const r = lrkc("eval", other, "--device", "cpu", "--batches", "2", "--init-adapters", peft);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain(
      `note: --init-adapters ${peft} replaces the block's \`init_adapters\` (${join(dir, "nowhere")})`,
    );
  }, 120_000);

  it("a path that is not adapters is E0502 at the setting's line, with a fix", () => {
    const missing = join(dir, "missing.lrk");
    writeFileSync(missing, withSetting('init_adapters "nowhere"'));
    const line = withSetting("").split("\n").indexOf("  data arith") + 2;
    const r = lrkc("train", missing, "--device", "cpu", "--steps", "1", "--out", join(dir, "t-m"));
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`missing.lrk:${line}:17: error[E0502]`);
    expect(r.stderr).not.toContain("a bug in lrkc");
    const e = lrkc("eval", missing, "--device", "cpu", "--batches", "1");
    expect(e.status).toBe(1);
    expect(e.stderr).toContain(`missing.lrk:${line}:17: error[E0502]`);
  }, 120_000);

  it("a setting that is not a string is E0402 from lrkc check", () => {
    const wrong = join(dir, "wrong.lrk");
    writeFileSync(wrong, withSetting("init_adapters 3"));
    const r = lrkc("check", wrong);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("`init_adapters` takes a folder or file name, not");
  });
});
