// Files in a hostile environment (issue 10): a full disk, a read-only folder, `--out` that is a
// file, sources that are pipes or devices or huge, deleted working directories, import chains
// thousands of files deep. Each is a diagnostic (exit 1), never a hang, a crash (exit 2) or a
// lost file.
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { root } from "../helpers.js";
import { writeFileAtomic, writeFilesAtomic } from "../../runtime/atomic.js";

const lrkc = join(root, "bin", "lrkc.js");

function run(args: string[], cwd = root, timeout = 60_000) {
  const r = spawnSync(process.execPath, [lrkc, ...args], {
    cwd,
    encoding: "utf8",
    timeout,
    env: { ...process.env, NO_COLOR: "1" },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, signal: r.signal };
}

const tempDir = () => mkdtempSync(join(tmpdir(), "lrkc-files-"));

const messy = "model M(d:int){\nl=Linear(d,d) // keep me\nforward(x)=l(x)}\n";
const clean = "model M(d: int) {\n  l = Linear(d, d) // keep me\n  forward(x) = l(x)\n}\n";

// ---------------------------------------------------------------- small file systems (root only)

const mounted: string[] = [];
afterAll(() => {
  for (const dir of mounted) spawnSync("umount", [dir]);
});

/** A fresh tmpfs of `size` (e.g. "64k"), or the reason there is none (not root, no mount). */
function smallDisk(size: string, readOnly = false): { dir: string } | { reason: string } {
  if (process.getuid?.() !== 0) return { reason: "not root: cannot mount a small tmpfs" };
  const dir = tempDir();
  const r = spawnSync("mount", [
    "-t",
    "tmpfs",
    "-o",
    `size=${size}${readOnly ? ",ro" : ""}`,
    "tmpfs",
    dir,
  ]);
  if (r.status !== 0)
    return { reason: `mount -t tmpfs failed: ${String(r.stderr).trim() || r.error}` };
  mounted.push(dir);
  return { dir };
}

/** Fills the rest of the disk holding `dir`, so the next write fails with ENOSPC. */
function fill(dir: string): void {
  const chunk = Buffer.alloc(4096, 120);
  for (let i = 0; ; i++) {
    try {
      writeFileSync(join(dir, `filler-${i}`), chunk);
    } catch {
      break;
    }
  }
  // Also the last partial page: a byte at a time until nothing more fits.
  try {
    for (let i = 0; i < 4096; i++) writeFileSync(join(dir, `crumb-${i}`), "x");
  } catch {
    // full
  }
}

function tempFiles(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith(".tmp"));
}

describe("lrkc fmt --write on a full disk", () => {
  it("leaves the source intact and reports E0003", (ctx) => {
    const disk = smallDisk("16k");
    if ("reason" in disk) {
      console.warn(`skipped: ${disk.reason}`);
      return ctx.skip(disk.reason);
    }
    const source = join(disk.dir, "model.lrk");
    // Big enough that its formatted version needs new pages on the disk.
    const big = Array.from({ length: 60 }, (_, i) => messy.replace("M(", `M${i}(`)).join("");
    writeFileSync(source, big);
    chmodSync(source, 0o640);
    fill(disk.dir);
    const r = run(["fmt", "--write", source]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`error[E0003]: cannot write \`${source}\`: no space left on device`);
    expect(r.stderr).toContain("the file is unchanged");
    expect(r.stderr).not.toContain("internal error");
    expect(readFileSync(source, "utf8")).toBe(big);
    expect(statSync(source).mode & 0o777).toBe(0o640);
    expect(tempFiles(disk.dir)).toEqual([]);
  });
});

describe("writeFileAtomic", () => {
  it("keeps the file's mode, follows a symbolic link, leaves no temporary file", () => {
    const dir = tempDir();
    const target = join(dir, "m.lrk");
    writeFileSync(target, messy);
    chmodSync(target, 0o600);
    const link = join(dir, "link.lrk");
    symlinkSync(target, link);
    writeFileAtomic(link, clean);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(readFileSync(target, "utf8")).toBe(clean);
    expect(statSync(target).mode & 0o777).toBe(0o600);
    expect(tempFiles(dir)).toEqual([]);
  });

  it("fmt --write keeps an executable bit and rewrites in place", () => {
    const dir = tempDir();
    const path = join(dir, "m.lrk");
    writeFileSync(path, messy);
    chmodSync(path, 0o755);
    expect(run(["fmt", "--write", path]).code).toBe(0);
    expect(readFileSync(path, "utf8")).toBe(clean);
    expect(statSync(path).mode & 0o777).toBe(0o755);
    expect(tempFiles(dir)).toEqual([]);
  });
});

// ------------------------------------------------------------------------------ build --out

const program = join(root, "examples", "mlp.lrk");
const buildPlan = (out: string) =>
  run(["build", program, "--emit", "plan", "--device", "portable", "--out", out]);

function expectE0003(r: ReturnType<typeof run>, text: string): void {
  expect(r.code, r.stderr).toBe(1);
  expect(r.stderr).toContain("error[E0003]");
  expect(r.stderr).toContain(text);
  expect(r.stderr).not.toContain("internal error");
}

describe("lrkc build --out", () => {
  it("writes plan.json and the kernels, and no temporary files", () => {
    const out = join(tempDir(), "plan");
    const r = buildPlan(out);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(out, "plan.json"), "utf8")).kernels.length).toBeGreaterThan(
      0,
    );
    expect(readdirSync(out).some((f) => f.endsWith(".wgsl"))).toBe(true);
    expect(tempFiles(out)).toEqual([]);
  });

  it("refuses an empty --out", () => {
    expectE0003(buildPlan(""), "`--out` is empty");
  });

  it("refuses --out that is a file, or under a file", () => {
    const file = join(tempDir(), "taken");
    writeFileSync(file, "mine");
    expectE0003(buildPlan(file), "it is a file, not a folder");
    expectE0003(buildPlan(join(file, "sub")), "a part of the path is a file, not a folder");
    expect(readFileSync(file, "utf8")).toBe("mine");
  });

  it("reports a read-only folder", (ctx) => {
    const disk = smallDisk("16k", true);
    if ("reason" in disk) {
      console.warn(`skipped: ${disk.reason}`);
      return ctx.skip(disk.reason);
    }
    expectE0003(buildPlan(disk.dir), "read-only");
  });

  it("keeps the old plan.json on a full disk", (ctx) => {
    const disk = smallDisk("64k");
    if ("reason" in disk) {
      console.warn(`skipped: ${disk.reason}`);
      return ctx.skip(disk.reason);
    }
    writeFileSync(join(disk.dir, "plan.json"), "old plan\n");
    fill(disk.dir);
    expectE0003(buildPlan(disk.dir), "no space left on device");
    expect(readFileSync(join(disk.dir, "plan.json"), "utf8")).toBe("old plan\n");
    expect(tempFiles(disk.dir)).toEqual([]);
  });
});

describe("writeFilesAtomic (build --out's kernels and plan.json, flushed together)", () => {
  it("writes every file, keeps an existing file's mode, and leaves no temporary files", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "k0.wgsl"), "old");
    chmodSync(join(dir, "k0.wgsl"), 0o600);
    const files = Array.from({ length: 40 }, (_, i) => ({
      path: join(dir, `k${i}.wgsl`),
      data: `kernel ${i}`,
    }));
    expect(writeFilesAtomic(files)).toBeUndefined();
    for (let i = 0; i < 40; i++) expect(readFileSync(files[i]!.path, "utf8")).toBe(`kernel ${i}`);
    expect(statSync(join(dir, "k0.wgsl")).mode & 0o777).toBe(0o600);
    expect(tempFiles(dir)).toEqual([]);
  });

  it("leaves a file that already holds its content as it is (same inode), and rewrites the others", () => {
    const dir = tempDir();
    const same = join(dir, "same.wgsl");
    const changed = join(dir, "changed.wgsl");
    writeFileSync(same, "kernel");
    writeFileSync(changed, "kernel");
    const before = statSync(same).ino;
    const changedBefore = statSync(changed).ino;
    expect(
      writeFilesAtomic([
        { path: same, data: "kernel" },
        { path: changed, data: "kernel 2" },
      ]),
    ).toBeUndefined();
    expect(statSync(same).ino).toBe(before);
    expect(statSync(changed).ino).not.toBe(changedBefore);
    expect(readFileSync(changed, "utf8")).toBe("kernel 2");
  });

  it("names the file whose rename failed, past files left as they were", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "same.wgsl"), "kernel");
    mkdirSync(join(dir, "taken.wgsl")); // a folder where a file goes: its rename fails
    const files = [
      { path: join(dir, "same.wgsl"), data: "kernel" },
      { path: join(dir, "new.wgsl"), data: "new" },
      { path: join(dir, "taken.wgsl"), data: "x" },
    ];
    const failed = writeFilesAtomic(files);
    expect(failed?.path).toBe(files[2]!.path);
    expect(tempFiles(dir)).toEqual([]);
  });

  it("stops at a failure, names its file, and changes no file and leaves no temporary files", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "k0.wgsl"), "old");
    const files = Array.from({ length: 40 }, (_, i) => ({
      // the second file's folder is missing: its temporary file cannot be made
      path: join(dir, i === 1 ? "missing" : "", `k${i}.wgsl`),
      data: `kernel ${i}`,
    }));
    const failed = writeFilesAtomic(files);
    expect(failed?.path).toBe(files[1]!.path);
    expect((failed?.error as NodeJS.ErrnoException).code).toBe("ENOENT");
    expect(readdirSync(dir)).toEqual(["k0.wgsl"]);
    expect(readFileSync(join(dir, "k0.wgsl"), "utf8")).toBe("old");
  });
});

// ------------------------------------------------------------------------- what is read

function mkfifo(path: string): boolean {
  return spawnSync("mkfifo", [path]).status === 0;
}

describe("sources that are not regular files", () => {
  it("refuses a FIFO as the entry file instead of waiting on it", (ctx) => {
    const fifo = join(tempDir(), "pipe.lrk");
    if (!mkfifo(fifo)) return ctx.skip("mkfifo failed");
    const r = run(["check", fifo], root, 20_000);
    expect(r.signal, "lrkc hung on a FIFO").toBeNull();
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E0001]");
    expect(r.stderr).toContain("is a named pipe (FIFO)");
  });

  it("refuses a FIFO imported, at the import", (ctx) => {
    const dir = tempDir();
    if (!mkfifo(join(dir, "pipe.lrk"))) return ctx.skip("mkfifo failed");
    writeFileSync(join(dir, "main.lrk"), 'import "./pipe.lrk".{x}\nconst y = x\n');
    const r = run(["check", "main.lrk"], dir, 20_000);
    expect(r.signal, "lrkc hung on a FIFO").toBeNull();
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("main.lrk:1:8: error[E0001]: `./pipe.lrk` is a named pipe (FIFO)");
  });

  it("refuses /dev/zero instead of reading without end", () => {
    const r = run(["check", "/dev/zero"], root, 20_000);
    expect(r.signal, "lrkc read /dev/zero without end").toBeNull();
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E0001]: `/dev/zero` is a character device");
  });

  it("refuses a source over 16 MB", () => {
    const path = join(tempDir(), "huge.lrk");
    writeFileSync(path, Buffer.alloc(17 * 1024 * 1024, 32));
    const r = run(["check", path]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("too large for a source file (the limit is 16.0 MB)");
  });

  it("reports an imported directory at the import, not as an internal error", () => {
    const dir = tempDir();
    mkdirSync(join(dir, "lib"));
    writeFileSync(join(dir, "main.lrk"), 'import "./lib".{x}\nconst y = x\n');
    const r = run(["check", "main.lrk"], dir);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("main.lrk:1:8: error[E0001]: `./lib` is a directory");
    expect(r.stderr).not.toContain("internal error");
  });

  it("reports an imported file that is not UTF-8 as E0002", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "latin1.lrk"), Buffer.from("const x = 1 // caf\xe9\n", "latin1"));
    writeFileSync(join(dir, "main.lrk"), 'import "./latin1.lrk".{x}\nconst y = x\n');
    const r = run(["check", "main.lrk"], dir);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("main.lrk:1:8: error[E0002]: `./latin1.lrk` is not UTF-8 text");
  });
});

describe("a deleted working directory", () => {
  /** Runs lrkc from a directory that is deleted before it starts. */
  function runInDeleted(args: string[]) {
    const gone = join(tempDir(), "gone");
    mkdirSync(gone);
    const r = spawnSync(
      "sh",
      [
        "-c",
        'cd "$1" && rmdir "$1" && shift && exec "$@"',
        "sh",
        gone,
        process.execPath,
        lrkc,
        ...args,
      ],
      { encoding: "utf8", timeout: 60_000, env: { ...process.env, NO_COLOR: "1" } },
    );
    return { code: r.status, stderr: r.stderr, signal: r.signal };
  }

  it("reports a relative path as unreadable, saying why", () => {
    const r = runInDeleted(["check", "model.lrk"]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("the working directory no longer exists");
  });

  it("reports build --out into a relative folder instead of hanging in mkdir", () => {
    const r = runInDeleted([
      "build",
      join(root, "examples", "mlp.lrk"),
      "--emit",
      "plan",
      "--device",
      "portable",
      "--out",
      "plan/sub",
    ]);
    expect(r.signal, "lrkc hung").toBeNull();
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(
      "error[E0003]: cannot write `plan/sub`: the working directory no longer exists",
    );
  });

  it("reports --out under a folder where mkdir says ENOENT (/proc) instead of hanging in mkdir", () => {
    // Node's recursive mkdirSync climbs and retries forever there
    const r = run(
      [
        "build",
        join(root, "examples", "mlp.lrk"),
        "--emit",
        "plan",
        "--device",
        "portable",
        "--out",
        "/proc/lrk-out/sub",
      ],
      root,
      20_000,
    );
    expect(r.signal, "lrkc hung").toBeNull();
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("error[E0003]: cannot write `/proc/lrk-out/sub`");
  });

  it("checks a program with imports given by absolute path", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "lib.lrk"), "const x = 1\n");
    writeFileSync(join(dir, "main.lrk"), 'import "./lib.lrk".{x}\nconst y = x\n');
    const r = runInDeleted(["check", join(dir, "main.lrk")]);
    expect(r.code, r.stderr).toBe(0);
  });
});

describe("deep import chains", () => {
  it("loads a chain of 3,000 imported files without overflowing the stack", () => {
    const dir = tempDir();
    const n = 3000;
    for (let i = 0; i < n; i++)
      writeFileSync(
        join(dir, `f${i}.lrk`),
        i < n - 1 ? `import "./f${i + 1}.lrk".{x}\n` : "const x = 1\n",
      );
    writeFileSync(join(dir, "main.lrk"), 'import "./f0.lrk".{x}\nconst y = x\n');
    const r = run(["check", "main.lrk"], dir, 120_000);
    expect(r.stderr).not.toContain("internal error");
    expect(r.code, r.stderr).toBe(0);
  });

  it("still reports a cycle with the whole chain", () => {
    const dir = tempDir();
    writeFileSync(join(dir, "a.lrk"), 'import "./b.lrk".{y}\nconst x = 1\n');
    writeFileSync(join(dir, "b.lrk"), 'import "./c.lrk".{z}\nconst y = 1\n');
    writeFileSync(join(dir, "c.lrk"), 'import "./a.lrk".{x}\nconst z = 1\n');
    const r = run(["check", "a.lrk"], dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /c\.lrk:1:8: error\[E0203\]: import cycle: a\.lrk → .*b\.lrk → .*c\.lrk → a\.lrk/,
    );
    expect(r.stderr).toContain("move the shared definitions into a file that both import");
  });
});

describe("a stop signal while build --out writes its files", () => {
  // In a child process: the signal goes to that process alone.
  const held = (body: string) =>
    spawnSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `import { holdingSignals } from ${JSON.stringify(join(root, "dist/cli/signals.js"))};
         const r = await holdingSignals(() => { ${body} });
         console.log(JSON.stringify(r));`,
      ],
      { encoding: "utf8", timeout: 20_000 },
    );

  it("lets the write finish, then names the signal (no temporary files left half-way)", () => {
    const r = held(
      "process.kill(process.pid, 'SIGINT'); let x = 0; for (let i = 0; i < 1e6; i++) x += i; return x > 0;",
    );
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ result: true, signal: "SIGINT" });
  });

  it("names none when none came, and stops at once on one after the write", () => {
    const r = held("return 7;");
    expect(JSON.parse(r.stdout)).toEqual({ result: 7 });
    const after = spawnSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        `import { holdingSignals } from ${JSON.stringify(join(root, "dist/cli/signals.js"))};
         await holdingSignals(() => 1);
         process.kill(process.pid, 'SIGTERM');
         setTimeout(() => console.log("still running"), 2000);`,
      ],
      { encoding: "utf8", timeout: 20_000 },
    );
    expect(after.signal).toBe("SIGTERM");
    expect(after.stdout).toBe("");
  });
});
