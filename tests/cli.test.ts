// lrkc as a user runs it: exit codes, output format, --json, --help, and internal errors.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { root } from "./helpers.js";

const lrkc = join(root, "bin", "lrkc.js");

function run(args: string[], cwd = root) {
  const r = spawnSync(process.execPath, [lrkc, ...args], {
    cwd,
    encoding: "utf8",
    env: { ...process.env, NO_COLOR: "1" },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function tempFile(name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), "lrkc-"));
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const threeErrors = `model M(d: int) {
  l = Linear(d d)
}

train t {
  adapt blocks.*. with lora(rank: 4)
}

const lr = (1,
const ok = 3
`;

describe("lrkc check", () => {
  it("exits 0 on a valid file", () => {
    const path = tempFile("ok.lrk", "const x = 1\n");
    const r = run(["check", path]);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain("no problems");
  });

  it("reports three syntax errors in the documented format, exit 1, no stack trace", () => {
    const path = tempFile("bad.lrk", threeErrors);
    const r = run(["check", path]);
    expect(r.code).toBe(1);
    const headers = r.stderr.split("\n").filter((l) => /error\[E\d{4}\]/.test(l));
    expect(headers).toEqual([
      `${path}:2:16: error[E0101]: expected \`)\` but found \`d\``,
      `${path}:6:19: error[E0101]: expected a selector component (a name, \`*\`, \`**\` or \`{…}\`) but found \`with\``,
      `${path}:10:1: error[E0101]: expected \`)\` but found \`const\``,
    ]);
    expect(r.stderr).toContain(" 2 |   l = Linear(d d)\n   |                ^");
    expect(r.stderr).toContain("3 errors");
    expect(r.stderr).not.toMatch(/\bat .*\.js:\d+/);
  });

  it("gives the same three diagnostics as JSON with --json", () => {
    const path = tempFile("bad.lrk", threeErrors);
    const r = run(["check", "--json", path]);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as {
      diagnostics: { code: string; file: string; line: number; column: number; message: string }[];
      errors: number;
    };
    expect(out.errors).toBe(3);
    expect(out.diagnostics.map((d) => [d.code, d.file, d.line, d.column])).toEqual([
      ["E0101", path, 2, 16],
      ["E0101", path, 6, 19],
      ["E0101", path, 10, 1],
    ]);
    expect(out.diagnostics[0]!.message).toBe("expected `)` but found `d`");
  });

  it("reports a missing file as a diagnostic", () => {
    const r = run(["check", "no/such/file.lrk"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E0001]: cannot read `no/such/file.lrk`: no such file");
  });

  it("reports a directory and a non-UTF-8 file", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrkc-"));
    expect(run(["check", dir]).stderr).toContain("is a directory");
    const path = tempFile("latin1.lrk", "");
    writeFileSync(path, Buffer.from([0x63, 0xff, 0xfe, 0x0a]));
    const r = run(["check", path]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("error[E0002]");
  });
});

describe("lrkc fmt", () => {
  const messy = "model M(d:int){\nl=Linear(d,d) // keep me\nforward(x)=l(x)}\n";
  const clean = "model M(d: int) {\n  l = Linear(d, d) // keep me\n  forward(x) = l(x)\n}\n";

  it("prints the formatted file", () => {
    const r = run(["fmt", tempFile("m.lrk", messy)]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(clean);
  });

  it("--check fails on an unformatted file and changes nothing", () => {
    const path = tempFile("m.lrk", messy);
    const r = run(["fmt", "--check", path]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${path}: not formatted`);
    expect(readFileSync(path, "utf8")).toBe(messy);
    expect(run(["fmt", "--check", tempFile("c.lrk", clean)]).code).toBe(0);
  });

  it("--json prints one JSON object: the formatted text, or the files --check found", () => {
    const path = tempFile("m.lrk", messy);
    const printed = run(["fmt", "--json", path]);
    expect(printed.code).toBe(0);
    expect(JSON.parse(printed.stdout)).toEqual({
      diagnostics: [],
      errors: 0,
      files: [{ path, formatted: clean }],
    });
    const checked = run(["fmt", "--json", "--check", path]);
    expect(checked.code).toBe(1);
    expect(JSON.parse(checked.stdout)).toEqual({ diagnostics: [], errors: 0, unformatted: [path] });
  });

  it("--write rewrites in place", () => {
    const path = tempFile("m.lrk", messy);
    expect(run(["fmt", "--write", path]).code).toBe(0);
    expect(readFileSync(path, "utf8")).toBe(clean);
  });

  it("refuses to format a file with syntax errors", () => {
    const path = tempFile("bad.lrk", threeErrors);
    const r = run(["fmt", "--write", path]);
    expect(r.code).toBe(1);
    expect(readFileSync(path, "utf8")).toBe(threeErrors);
  });
});

describe("help", () => {
  it("describes every command with an example", () => {
    for (const command of ["check", "fmt"]) {
      const r = run([command, "--help"]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("Examples:");
      expect(r.stdout).toContain(`$ lrkc ${command}`);
    }
    const top = run(["--help"]);
    expect(top.code).toBe(0);
    expect(top.stdout).toContain("check");
    expect(top.stdout).toContain("fmt");
  });

  it("exits 1 with usage help on an unknown command", () => {
    const r = run(["frobnicate"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("unknown command");
  });
});
