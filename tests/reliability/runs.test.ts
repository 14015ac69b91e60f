// `lrkc train`'s run folder under stress (issue 10): a stopped run resumes exactly from the
// command it prints, on every signal and on the CPU; --resume continues only the run the folder
// records; a finished or busy folder is not overwritten; temporary files of dead writes are
// cleaned up; environment problems are diagnostics; a held-out split smaller than a batch is
// skipped, never NaN; the progress line fits the terminal.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { progressLine, resumeCommand } from "../../cli/train.js";
import { RunFolder, RunFolderError } from "../../runtime/run-folder.js";
import { readSafetensors, writeSafetensors } from "../../runtime/safetensors.js";
import { lrkcBin, moonsProgram, runSetup } from "../helpers.js";

const lrkc = lrkcBin;

const program = (options: { n?: number; extra?: string; steps?: number } = {}) =>
  moonsProgram(options);

/** The same file with a second train block (`other`, a smaller model). */
const withOther = (text: string) =>
  text.replace(
    /\n$/,
    `
train other {
  model Net(hidden: 8)
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with adamw(lr: 1e-2)
  steps 40
  batch 16
}
`,
  );

const setup = (text = program()) => runSetup(text, "lrk-reliability-");

function lrkcTrain(args: string[], cwd: string) {
  const r = spawnSync(process.execPath, [lrkc, "train", ...args], { cwd, encoding: "utf8" });
  return { code: r.status, stderr: r.stderr };
}

function stepLosses(out: string): Map<number, number> {
  if (!existsSync(join(out, "metrics.jsonl"))) return new Map();
  const lines = readFileSync(join(out, "metrics.jsonl"), "utf8").split("\n").filter(Boolean);
  return new Map(
    lines
      .map((l) => JSON.parse(l) as { kind: string; step: number; loss: number })
      .filter((m) => m.kind === "step")
      .map((m) => [m.step, m.loss]),
  );
}

function expectSameWeights(a: string, b: string): void {
  const expected = readSafetensors(join(a, "final.safetensors")).tensors;
  const got = readSafetensors(join(b, "final.safetensors")).tensors;
  expect([...got.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [name, t] of expected) expect([...got.get(name)!.data], name).toEqual([...t.data]);
}

/** Runs `lrkc train`, sends `signal` once step `after` is logged; exit code and stderr. */
function trainAndSignal(
  args: string[],
  cwd: string,
  out: string,
  signal: NodeJS.Signals,
  after = 5,
): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [lrkc, "train", ...args], { cwd });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    let sent = false;
    const timer = setInterval(() => {
      if (!sent && stepLosses(out).has(after)) {
        sent = true;
        process.kill(child.pid!, signal);
      }
    }, 5);
    child.on("error", reject);
    child.on("close", (code) => {
      clearInterval(timer);
      resolve({ code, stderr });
    });
  });
}

/** The `lrkc train … --resume` a stopped run printed, as arguments for `lrkc`. */
function printedResume(stderr: string): string[] {
  const m = /resume with `lrkc (train [^`]*)`/.exec(stderr);
  expect(m, stderr).not.toBeNull();
  return m![1]!.split(" ").slice(1);
}

describe("a stopped run resumes exactly from the command it prints", () => {
  // --steps 60 differs from the block's 40: a resume that forgot it would finish a 40-step run.
  const options = ["--steps", "60", "--device", "cpu"];
  const whole = setup();
  let reference: Map<number, number> | undefined;
  const uninterrupted = () => {
    if (!reference) {
      const r = lrkcTrain([whole.file, ...options, "--out", whole.out], whole.dir);
      expect(r.code, r.stderr).toBe(0);
      reference = stepLosses(whole.out);
      expect(reference.size).toBe(60);
    }
    return reference;
  };

  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    it(`${signal} on --device cpu: checkpoint, exit 130, then the printed command finishes the same run`, async () => {
      const expected = uninterrupted();
      const cut = setup();
      const stopped = await trainAndSignal(
        [cut.file, ...options, "--out", cut.out],
        cut.dir,
        cut.out,
        signal,
      );
      expect(stopped.code, stopped.stderr).toBe(130);
      expect(stopped.stderr).toMatch(/stopped after step \d+; checkpoint saved/);
      expect(existsSync(join(cut.out, "final.safetensors"))).toBe(false);
      expect(existsSync(join(cut.out, "run.lock"))).toBe(false);
      const resume = printedResume(stopped.stderr);
      for (const option of ["--steps 60", "--device cpu", `--out ${cut.out}`, "--resume"])
        expect(resume.join(" ")).toContain(option);
      expect(stepLosses(cut.out).size).toBeLessThan(60);

      const resumed = lrkcTrain(resume, cut.dir);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stderr).toMatch(/resuming after step \d+/);
      expect([...stepLosses(cut.out)]).toEqual([...expected]);
      expectSameWeights(whole.out, cut.out);
    });
  }
});

describe("the printed resume command", () => {
  it("repeats every option of the run, quoted for the shell", () => {
    const command = resumeCommand(
      "my programs/run.lrk",
      {
        train: "run",
        steps: "400",
        batch: "8",
        device: "cpu",
        init: "it's.safetensors",
        autotune: false,
      },
      "runs/x y",
    );
    expect(command).toBe(
      "lrkc train 'my programs/run.lrk' --train run --steps 400 --batch 8 --device cpu --init 'it'\\''s.safetensors' --out 'runs/x y' --no-autotune --resume",
    );
  });

  it("--force and --resume together are a usage error", () => {
    const run = setup();
    const r = lrkcTrain([run.file, "--out", run.out, "--force", "--resume"], run.dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("--force (start over) and --resume (continue) contradict");
  });
});

describe("--resume continues only the run the folder records", () => {
  const stopped = setup();
  let stoppedRun: ReturnType<typeof trainAndSignal>;
  beforeAll(() => {
    stoppedRun = trainAndSignal(
      [stopped.file, "--steps", "60", "--device", "cpu", "--out", stopped.out],
      stopped.dir,
      stopped.out,
      "SIGINT",
    );
  });

  it("records the run in run.json", async () => {
    expect((await stoppedRun).code).toBe(130);
    const record = JSON.parse(readFileSync(join(stopped.out, "run.json"), "utf8")) as Record<
      string,
      unknown
    >;
    expect(record).toMatchObject({ train: "run", steps: 60, batch: 16, device: "cpu" });
    expect(record["source_sha256"]).toMatch(/^[0-9a-f]{64}$/);
  });

  const refusals: [string, string[], RegExp][] = [
    [
      "another step count",
      ["--steps", "120", "--device", "cpu"],
      /steps is 60 in the run, 120 now/,
    ],
    ["no --steps (the block's 40)", ["--device", "cpu"], /steps is 60 in the run, 40 now/],
    ["another batch", ["--steps", "60", "--batch", "8", "--device", "cpu"], /batch is 16/],
  ];
  for (const [what, args, message] of refusals) {
    it(`refuses ${what} with E0502 and the command that continues the run`, async () => {
      await stoppedRun;
      const before = readFileSync(join(stopped.out, "metrics.jsonl"), "utf8");
      const r = lrkcTrain([stopped.file, ...args, "--out", stopped.out, "--resume"], stopped.dir);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain("error[E0502]");
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(
        /help: continue that run with `lrkc train .* --steps 60 .*--resume`/,
      );
      expect(readFileSync(join(stopped.out, "metrics.jsonl"), "utf8")).toBe(before);
    });
  }

  it("refuses another train block", async () => {
    await stoppedRun;
    const copy = setup(withOther(program()));
    const r = lrkcTrain(
      [
        copy.file,
        "--train",
        "other",
        "--steps",
        "60",
        "--device",
        "cpu",
        "--out",
        stopped.out,
        "--resume",
      ],
      stopped.dir,
    );
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("error[E0502]");
    expect(r.stderr).toContain('train is "run" in the run, "other" now');
  });

  it("refuses a program whose text changed since the run started", async () => {
    await stoppedRun;
    const copy = setup(program({ extra: "// edited" }));
    const r = lrkcTrain(
      [copy.file, "--steps", "60", "--device", "cpu", "--out", stopped.out, "--resume"],
      stopped.dir,
    );
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("error[E0502]");
    expect(r.stderr).toContain("the program's text changed");
  });

  it("refuses a checkpoint whose step is empty instead of restarting at step 0", () => {
    const run = setup();
    expect(
      lrkcTrain([run.file, "--device", "cpu", "--out", run.out, "--steps", "5"], run.dir).code,
    ).toBe(0);
    const path = join(run.out, "checkpoint.safetensors");
    const { tensors, metadata } = readSafetensors(path);
    for (const bad of ["", "-1", "2.5", "x"]) {
      writeSafetensors(path, tensors, { ...metadata, step: bad });
      const r = lrkcTrain(
        [run.file, "--device", "cpu", "--out", run.out, "--steps", "5", "--resume"],
        run.dir,
      );
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain("error[E0502]");
      expect(r.stderr).toContain("does not say which step it was saved at");
    }
  });
});

describe("the run folder belongs to one run", () => {
  it("a finished run is not replaced without --force; --force replaces it", () => {
    const run = setup();
    const args = (steps: number) => [
      run.file,
      "--device",
      "cpu",
      "--steps",
      `${steps}`,
      "--out",
      run.out,
    ];
    expect(lrkcTrain(args(8), run.dir).code).toBe(0);
    const metrics = readFileSync(join(run.out, "metrics.jsonl"), "utf8");
    const again = lrkcTrain(args(5), run.dir);
    expect(again.code, again.stderr).toBe(1);
    expect(again.stderr).toContain("error[E0505]");
    expect(again.stderr).toContain("already holds a run of `run` that finished");
    expect(again.stderr).toContain("--force");
    expect(readFileSync(join(run.out, "metrics.jsonl"), "utf8")).toBe(metrics);
    const forced = lrkcTrain([...args(5), "--force"], run.dir);
    expect(forced.code, forced.stderr).toBe(0);
    expect(stepLosses(run.out).size).toBe(5);
  });

  it("a folder another live lrkc train holds is refused; a dead one's lock is taken over", () => {
    const run = setup();
    mkdirSync(run.out);
    // this test's own process is alive: the folder is in use
    writeFileSync(join(run.out, "run.lock"), `${process.pid}\n`);
    const busy = lrkcTrain(
      [run.file, "--device", "cpu", "--steps", "3", "--out", run.out],
      run.dir,
    );
    expect(busy.code, busy.stderr).toBe(1);
    expect(busy.stderr).toContain("error[E0505]");
    expect(busy.stderr).toContain(`in use by another \`lrkc train\` (process ${process.pid})`);
    expect(existsSync(join(run.out, "metrics.jsonl"))).toBe(false);
    // a process that has exited: its lock is stale
    const dead = spawnSync(process.execPath, ["-e", "process.pid"]).pid!;
    writeFileSync(join(run.out, "run.lock"), `${dead}\n`);
    const r = lrkcTrain([run.file, "--device", "cpu", "--steps", "3", "--out", run.out], run.dir);
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(join(run.out, "run.lock"))).toBe(false);
  });

  it("a killed lrkc train not yet reaped (a zombie) holds no lock", async () => {
    const run = setup();
    mkdirSync(run.out);
    const { parent, zombie } = await makeZombie();
    try {
      writeFileSync(join(run.out, "run.lock"), `${zombie}\n`);
      const r = lrkcTrain([run.file, "--device", "cpu", "--steps", "2", "--out", run.out], run.dir);
      expect(r.code, r.stderr).toBe(0);
    } finally {
      parent.kill("SIGKILL");
    }
  });

  it("two lrkc train processes on one --out: the second is refused while the first runs", async () => {
    const run = setup();
    const first = spawn(
      process.execPath,
      // long enough to outlast the second process's start
      [lrkc, "train", run.file, "--device", "cpu", "--steps", "1000000", "--out", run.out],
      { cwd: run.dir },
    );
    const firstExit = new Promise<number | null>((resolve) => first.on("close", resolve));
    while (!stepLosses(run.out).has(2)) await new Promise((r) => setTimeout(r, 10));
    const second = lrkcTrain(
      [run.file, "--device", "cpu", "--steps", "5", "--out", run.out, "--force"],
      run.dir,
    );
    process.kill(first.pid!, "SIGINT");
    expect(await firstExit).toBe(130);
    expect(second.code, second.stderr).toBe(1);
    expect(second.stderr).toContain("error[E0505]");
    expect(second.stderr).toContain(`(process ${first.pid})`);
    // the first run's log is its own: steps 1, 2, … in order, no line of the second
    const steps = [...stepLosses(run.out).keys()];
    expect(steps).toEqual(steps.map((_, i) => i + 1));
  });

  it("temporary files of writes that never finished are removed on the next start", () => {
    const run = setup();
    expect(
      lrkcTrain([run.file, "--device", "cpu", "--steps", "8", "--out", run.out], run.dir).code,
    ).toBe(0);
    const leftovers = [
      "checkpoint.safetensors.tmp-999999",
      "final.safetensors.tmp-12",
      "metrics.jsonl.tmp",
    ];
    for (const name of leftovers) writeFileSync(join(run.out, name), "torn");
    writeFileSync(join(run.out, "notes.tmp.txt"), "the user's");
    const r = lrkcTrain(
      [run.file, "--device", "cpu", "--steps", "8", "--out", run.out, "--force"],
      run.dir,
    );
    expect(r.code, r.stderr).toBe(0);
    const names = readdirSync(run.out);
    for (const name of leftovers) expect(names).not.toContain(name);
    expect(names).toContain("notes.tmp.txt");
  });
});

describe("environment problems are diagnostics (E0504), not bugs in lrkc", () => {
  const notBug = (stderr: string) => {
    expect(stderr).not.toContain("bug in lrkc");
    expect(stderr).not.toContain("internal error");
  };

  it("--out that is a file, under a file, or empty", () => {
    const run = setup();
    const file = join(run.dir, "a-file");
    writeFileSync(file, "x");
    for (const [out, reason] of [
      [file, "is not a folder"],
      [join(file, "below"), "is a file, not a folder"],
      ["", "--out) is empty"],
    ] as const) {
      const r = lrkcTrain([run.file, "--device", "cpu", "--steps", "2", "--out", out], run.dir);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain("error[E0504]");
      expect(r.stderr).toContain(reason);
      if (out) expect(r.stderr).toContain(out);
      notBug(r.stderr);
    }
  });

  it("a deleted working directory", () => {
    const run = setup();
    const gone = join(run.dir, "gone");
    mkdirSync(gone);
    const r = spawnSync(
      "sh",
      [
        "-c",
        `cd "${gone}" && rmdir "${gone}" && exec "${process.execPath}" "${lrkc}" train "${run.file}" --device cpu --steps 2`,
      ],
      { encoding: "utf8" },
    );
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toContain("error[E0504]");
    expect(r.stderr).toContain("working directory no longer exists");
    notBug(r.stderr);
  });

  // Root ignores permissions, so a read-only or small file system needs a mount.
  const mounts: string[] = [];
  afterAll(() => {
    for (const dir of mounts) spawnSync("umount", [dir]);
  });
  function mountTmpfs(options: string): string | undefined {
    if (process.getuid?.() !== 0) {
      console.log("skipped: mounting a tmpfs needs root");
      return undefined;
    }
    const dir = mkdtempSync(join(tmpdir(), "lrk-tmpfs-"));
    const r = spawnSync("mount", ["-t", "tmpfs", "-o", options, "tmpfs", dir], {
      encoding: "utf8",
    });
    if (r.status !== 0) {
      console.log(`skipped: cannot mount a tmpfs (${r.stderr.trim() || r.error?.message})`);
      return undefined;
    }
    mounts.push(dir);
    return dir;
  }

  it("a read-only output folder", () => {
    const dir = mountTmpfs("ro,size=64k");
    if (!dir) return;
    const run = setup();
    const r = lrkcTrain(
      [run.file, "--device", "cpu", "--steps", "2", "--out", join(dir, "out")],
      run.dir,
    );
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("error[E0504]");
    expect(r.stderr).toContain("read-only");
    notBug(r.stderr);
  });

  it("a full disk: lrkc train says so, and leaves no temporary file", () => {
    const dir = mountTmpfs("size=64k");
    if (!dir) return;
    const run = setup(program().replace("Net(hidden: int = 16)", "Net(hidden: int = 2048)"));
    const out = join(dir, "out");
    const r = lrkcTrain([run.file, "--device", "cpu", "--steps", "2", "--out", out], run.dir);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("error[E0504]");
    expect(r.stderr).toContain("the disk is full");
    notBug(r.stderr);
    expect(readdirSync(out).filter((n) => n.includes(".tmp"))).toEqual([]);
  });

  it("a full disk during a checkpoint keeps the previous checkpoint and no temporary file", () => {
    const dir = mountTmpfs("size=64k");
    if (!dir) return;
    const folder = new RunFolder(join(dir, "run"));
    const small = new Map([["w", { shape: [4], data: Float32Array.of(1, 2, 3, 4) }]]);
    folder.saveCheckpoint(5, small, { train: "t" });
    const big = new Map([["w", { shape: [32768], data: new Float32Array(32768) }]]);
    expect(() => folder.saveCheckpoint(10, big, { train: "t" })).toThrow(RunFolderError);
    expect(() => folder.saveCheckpoint(10, big, { train: "t" })).toThrow(/the disk is full/);
    const kept = readSafetensors(folder.checkpointPath);
    expect(kept.metadata["step"]).toBe("5");
    expect([...kept.tensors.get("w")!.data]).toEqual([1, 2, 3, 4]);
    expect(readdirSync(folder.dir).filter((n) => n.includes(".tmp"))).toEqual([]);
  });
});

describe("evaluation and progress", () => {
  it("a held-out split smaller than one batch is skipped with a note, never NaN", () => {
    // two_moons(n: 40) holds out 8 examples; the batch is 16
    const run = setup(program({ n: 40, extra: "eval every 2", steps: 4 }));
    const r = lrkcTrain([run.file, "--device", "cpu", "--out", run.out], run.dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("held-out evaluation skipped: the `valid` split has 8 examples");
    expect(r.stderr).not.toMatch(/NaN/);
    expect(readFileSync(join(run.out, "metrics.jsonl"), "utf8")).not.toMatch(/"eval"|null/);
  });

  it("the terminal's progress line fits its width", () => {
    const text = "step  3/400  loss 0.6571  lr×1.000  1.2k tok/s  ETA 1m05s";
    for (const columns of [20, 40, 60, 80, 200]) {
      const line = progressLine(text, 3, 400, columns);
      expect(line.length, `${columns} columns`).toBeLessThan(columns);
      expect(line).toContain("step");
    }
    expect(progressLine(text, 3, 400, 200)).toMatch(/^\[#?\.+\] step/);
    expect(progressLine(text, 3, 400, undefined)).toContain(text);
  });
});

/**
 * A process that has exited and is not reaped (state Z): `sleep 0 &` exits at once and its parent
 * then becomes `sleep 30`, which never reaps it. The shell may still reap it before its `exec`
 * when the child exits that early (seen on a loaded machine), so this tries again until /proc
 * shows the zombie.
 */
async function makeZombie(): Promise<{ parent: ChildProcess; zombie: number }> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const parent = spawn("sh", ["-c", "sleep 0 & echo $!; exec sleep 30"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    const zombie = Number(
      await new Promise<string>((resolve) => parent.stdout!.once("data", (d) => resolve(`${d}`))),
    );
    for (let i = 0; i < 100; i++) {
      let stat: string;
      try {
        stat = readFileSync(`/proc/${zombie}/stat`, "utf8");
      } catch {
        break; // reaped by the shell: try again
      }
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return { parent, zombie };
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    parent.kill("SIGKILL");
  }
  throw new Error("could not make a zombie process in 10 attempts");
}
