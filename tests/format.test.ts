// The formatter over every example and stdlib file: idempotent, meaning-preserving (the same AST
// apart from spans), comment-preserving; and the files in the repository are already formatted.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { format } from "../language/format.js";
import { lrkFiles, parseText, readRepoFile, root, withoutSpans } from "./helpers.js";

const files = lrkFiles();

describe("lrkc fmt on the shipped programs", () => {
  it("has examples and stdlib files to check", () => {
    expect(files.filter((f) => f.startsWith("examples/")).length).toBeGreaterThanOrEqual(6);
    expect(files.filter((f) => f.startsWith("stdlib/")).length).toBeGreaterThanOrEqual(4);
  });

  for (const path of files) {
    it(`${path}: fmt is idempotent, keeps the AST and every comment`, () => {
      const original = parseText(readRepoFile(path), path);
      expect(original.diagnostics).toEqual([]);
      const once = format(original.program, original.file);
      const reparsed = parseText(once, path);
      expect(reparsed.diagnostics).toEqual([]);
      expect(format(reparsed.program, reparsed.file)).toBe(once);
      expect(withoutSpans(reparsed.program.items)).toEqual(withoutSpans(original.program.items));
      const texts = (p: typeof original.program) =>
        p.comments.map((c) =>
          c.text
            .split(/\r?\n/)
            .map((l) => l.trim())
            .join("\n"),
        );
      expect(texts(reparsed.program)).toEqual(texts(original.program));
      expect(once).toBe(original.file.text);
    });
  }
});

describe("the main job", () => {
  it("lrkc check and lrkc fmt --check pass on every example and stdlib file", () => {
    const run = (args: string[]) =>
      spawnSync(process.execPath, [join(root, "bin", "lrkc.js"), ...args, ...files], {
        cwd: root,
        encoding: "utf8",
      });
    const check = run(["check"]);
    expect(check.stderr).toContain("no problems");
    expect(check.status).toBe(0);
    const fmt = run(["fmt", "--check"]);
    expect(fmt.stderr).toBe("");
    expect(fmt.status).toBe(0);
  });
});

describe("comment placement", () => {
  const cases: [string, string][] = [
    [
      "comments before, after and inside members stay put",
      "model M {\n  // before\n  l = Linear(4, 4) // after\n  /* block */\n  f(x) = l(x)\n}\n",
    ],
    ["a comment inside an expression moves before its line", "const x = f(a, /* why */ b)\n"],
    ["dangling comments at the end of a block", "model M {\n  l = Linear(4, 4)\n  // the end\n}\n"],
    ["blank lines are kept, at most one", "const a = 1\n\n\n\nconst b = 2\n"],
    [
      "a comment between `}` and `else`",
      "model M {\n  if a {\n    x = 1\n  } // c\n  else {\n    x = 2\n  }\n}\n",
    ],
  ];
  for (const [name, text] of cases) {
    it(name, () => {
      const r = parseText(text);
      expect(r.diagnostics).toEqual([]);
      const once = format(r.program, r.file);
      const again = parseText(once);
      expect(format(again.program, again.file)).toBe(once);
      expect(again.program.comments.map((c) => c.text)).toEqual(
        r.program.comments.map((c) => c.text),
      );
    });
  }

  it("keeps a comment between arguments there, breaking the call, and keeps a trailing one", () => {
    const r = parseText("const x = f(a, /* why */ b) // trailing\n");
    expect(format(r.program, r.file)).toBe("const x = f(\n  a, /* why */\n  b,\n) // trailing\n");
  });

  // Each of these is already in the layout fmt prints: comments inside a wrapped call or list
  // stay where they are (they used to move before the statement).
  const stable: [string, string][] = [
    [
      "a comment between the items of a wrapped list",
      "const ranks = [\n  4,\n  // the middle one\n  8,\n  16,\n]\n",
    ],
    [
      "a comment after an argument",
      "train t {\n  optimize ** with adamw(\n    lr: 3e-3, // tuned on arith\n    weight_decay: 0.01,\n  )\n}\n",
    ],
    [
      "comments in a nested call, before the first item and before the closing bracket",
      [
        "model M {",
        "  w = f(",
        "    // first",
        "    a,",
        "    g(",
        "      b, /* inner */",
        "      c,",
        "      // last of g",
        "    ),",
        "  ) // after",
        "}",
        "",
      ].join("\n"),
    ],
    ["a block comment before a comma", "const x = g(\n  a /* why */,\n  b,\n)\n"],
    [
      "comments among a definition's and a function's parameters",
      [
        "model M(",
        "  d: int, // width",
        "  // the depth",
        "  depth: int = 2 /* blocks */,",
        ") {",
        "  f(",
        "    x, // the input",
        "  ) = x",
        "  g(",
        "    x /* in */,",
        "  ) {",
        "    return x",
        "  }",
        "}",
        "",
      ].join("\n"),
    ],
  ];
  for (const [name, text] of stable) {
    it(`keeps ${name} in place`, () => {
      const r = parseText(text);
      expect(r.diagnostics).toEqual([]);
      expect(format(r.program, r.file)).toBe(text);
    });
  }

  it("a comment inside an argument printed on one line goes just before that argument", () => {
    const r = parseText("const x = f(\n  a + /* why */ b,\n  c,\n)\n");
    const out = format(r.program, r.file);
    expect(out).toBe("const x = f(\n  /* why */\n  a + b,\n  c,\n)\n");
    const again = parseText(out);
    expect(format(again.program, again.file)).toBe(out);
  });

  it("keeps comments in order: when one must move before the line, they all do", () => {
    // `/* b */` sits in the return type, printed on one line: it moves before the member, so
    // `/* a */`, before it in the source, cannot stay in the parameter list after it.
    const r = parseText("model M {\n  f(x /* a */) -> f32[/* b */ B] = x\n}\n");
    const out = format(r.program, r.file);
    expect(out).toBe("model M {\n  /* a */\n  /* b */\n  f(x) -> f32[B] = x\n}\n");
    const again = parseText(out);
    expect(format(again.program, again.file)).toBe(out);
  });

  it("breaks a one-line list whose items have a comment among them", () => {
    const r = parseText("const xs = [1, // one\n  2]\n");
    const out = format(r.program, r.file);
    expect(out).toBe("const xs = [\n  1, // one\n  2,\n]\n");
    const again = parseText(out);
    expect(withoutSpans(again.program.items)).toEqual(withoutSpans(r.program.items));
    expect(format(again.program, again.file)).toBe(out);
  });

  it("collapses runs of blank lines to one", () => {
    const r = parseText("const a = 1\n\n\n\nconst b = 2\n");
    expect(format(r.program, r.file)).toBe("const a = 1\n\nconst b = 2\n");
  });

  it("wraps a long call's arguments one per line", () => {
    const r = parseText(
      `const x = f(${Array.from({ length: 12 }, (_, i) => `argument_${i}`).join(", ")})\n`,
    );
    const out = format(r.program, r.file);
    expect(out.split("\n")[0]).toBe("const x = f(");
    expect(out.split("\n")[1]).toBe("  argument_0,");
    expect(Math.max(...out.split("\n").map((l) => l.length))).toBeLessThanOrEqual(100);
  });

  it("wraps a long list's items one per line, a list inside a call too", () => {
    const pairs = Array.from({ length: 6 }, (_, i) => `("layers.*.w${i}", "model.layers.*.q${i}")`);
    for (const line of [
      `const rules = [${pairs.join(", ")}]`,
      `const y = g([${pairs.join(", ")}])`,
    ]) {
      const r = parseText(line + "\n");
      const out = format(r.program, r.file);
      const lines = out.split("\n");
      expect(lines.some((l) => l.trim() === '("layers.*.w0", "model.layers.*.q0"),')).toBe(true);
      expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(100);
      const again = parseText(out);
      expect(again.diagnostics).toEqual([]);
      expect(format(again.program, again.file)).toBe(out);
      expect(withoutSpans(again.program.items)).toEqual(withoutSpans(r.program.items));
    }
  });
});
