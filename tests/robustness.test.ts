// Hostile and unusual inputs: each gets a clear diagnostic or parses, never a crash.
import { describe, expect, it } from "vitest";
import type * as A from "../language/ast.js";
import { analyze } from "../compiler/compile.js";
import {
  error,
  renderDiagnostic,
  renderDiagnostics,
  type Diagnostic,
} from "../language/diagnostics.js";
import { format } from "../language/format.js";
import { SourceFile } from "../language/source.js";
import { parseText, withoutSpans } from "./helpers.js";

/** All diagnostics of a program: syntax and names. */
function compileText(text: string): Diagnostic[] {
  return analyze(new SourceFile("m.lrk", text)).diagnostics;
}

const program = `model M(d: int) {
  l = Linear(d, d)
  forward(x) = l(x)
}
`;

function codes(text: string): string[] {
  return parseText(text).diagnostics.map((d) => d.code);
}

describe("unusual input", () => {
  it("accepts an empty file", () => {
    const r = parseText("");
    expect(r.diagnostics).toEqual([]);
    expect(r.program.items).toEqual([]);
  });

  it("reports a file of NUL bytes once, as unexpected characters", () => {
    const r = parseText("\0".repeat(1000));
    expect(r.diagnostics).toHaveLength(1);
    expect(r.diagnostics[0]!.code).toBe("E0105");
    expect(r.diagnostics[0]!.message).toContain("1000 unexpected characters");
    expect(r.diagnostics[0]!.message).toContain("U+0000");
  });

  it("refuses 5000 nested parentheses with a diagnostic", () => {
    const text = `const x = ${"(".repeat(5000)}1${")".repeat(5000)}`;
    const r = parseText(text);
    expect(r.diagnostics.map((d) => d.code)).toEqual(["E0104"]);
    expect(r.diagnostics[0]!.help).toContain("let");
  });

  it("parses deep but reasonable nesting", () => {
    const text = `const x = ${"(".repeat(200)}1${")".repeat(200)}`;
    expect(codes(text)).toEqual([]);
  });

  it("parses a 2 MB file", () => {
    const block = program.replace("M(", "M_N(");
    let text = "";
    for (let i = 0; text.length < 2_000_000; i++) text += block.replace("M_N", `M${i}`);
    const started = performance.now();
    const r = parseText(text);
    expect(r.diagnostics).toEqual([]);
    expect(r.program.items.length).toBeGreaterThan(20_000);
    expect(performance.now() - started).toBeLessThan(30_000);
  });

  it("treats CRLF line endings like LF", () => {
    const lf = parseText(program);
    const crlf = parseText(program.replace(/\n/g, "\r\n"));
    expect(crlf.diagnostics).toEqual([]);
    expect(withoutSpans(crlf.program.items)).toEqual(withoutSpans(lf.program.items));
    const d = parseText("const x = (1,\r\nconst y = 2\r\n").diagnostics[0]!;
    expect(d.at!.file.position(d.at!.span.start)).toEqual({ line: 2, column: 1 });
  });

  it("skips a byte-order mark", () => {
    const r = parseText("\uFEFF" + program);
    expect(r.diagnostics).toEqual([]);
    expect(r.program.items).toHaveLength(1);
  });

  it("reports an unterminated string and goes on", () => {
    const r = parseText(`data d = text("corpus.txt, context: 128)\nconst ok = 1\n`);
    expect(r.diagnostics.map((d) => d.code)).toContain("E0102");
    expect(r.diagnostics.find((d) => d.code === "E0102")!.help).toContain('"');
    expect(r.program.items.some((i) => i.kind === "Const")).toBe(true);
  });

  it("reports an unterminated block comment", () => {
    const r = parseText(`const x = 1\n/* never closed\nconst y = 2\n`);
    expect(r.diagnostics.map((d) => d.code)).toEqual(["E0103"]);
    expect(r.diagnostics[0]!.at!.file.position(r.diagnostics[0]!.at!.span.start)).toEqual({
      line: 2,
      column: 1,
    });
  });

  it("reports numbers too large for a float", () => {
    expect(codes("const x = 1e999")).toEqual(["E0106"]);
  });

  it("formats what it parses, even with CRLF and a BOM", () => {
    const r = parseText("\uFEFF" + program.replace(/\n/g, "\r\n"));
    expect(format(r.program, r.file)).toBe(program);
  });

  it("keeps every span inside the input after recovery", () => {
    const text = "model M {\n  l = Linear(d d\n  forward(x) = \n}\ntrain { steps }\n";
    const r = parseText(text);
    expect(r.diagnostics.length).toBeGreaterThan(0);
    const check = (value: unknown): void => {
      if (Array.isArray(value)) return value.forEach(check);
      if (value === null || typeof value !== "object") return;
      const span = (value as { span?: A.Program["span"] }).span;
      if (span) {
        expect(span.start).toBeGreaterThanOrEqual(0);
        expect(span.end).toBeLessThanOrEqual(text.length);
        expect(span.start).toBeLessThanOrEqual(span.end);
      }
      Object.values(value).forEach(check);
    };
    check(r.program);
  });
});

// Bidirectional controls (U+202E reorders what a terminal shows: "Trojan source") and other
// invisible characters must never reach the terminal raw from a diagnostic.
describe("invisible characters in diagnostics", () => {
  const raw =
    /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/;

  /** The frame's caret column and the column where `needle` is shown in the source line. */
  function caretAndTarget(rendered: string, needle: string): [number, number] {
    const lines = rendered.split("\n");
    const source = lines.findIndex((l) => /^ *\d+ \| /.test(l));
    return [lines[source + 1]!.indexOf("^"), lines[source]!.lastIndexOf(needle)];
  }

  it("escapes U+202E in a code frame and keeps the caret under the error", () => {
    const r = compileText(`const s = "a\u202Eb" + x\n`);
    const rendered = renderDiagnostics(r);
    expect(rendered).not.toMatch(raw);
    expect(rendered).toContain(`const s = "a\\u{202E}b" + x`);
    const [caret, target] = caretAndTarget(rendered, "x");
    expect(caret).toBe(target);
  });

  it("keeps carets right after several escapes and a tab, and covers an escaped character", () => {
    const names = renderDiagnostics(compileText(`const s = "\u2066\u200b\u2069"\t+ y\n`));
    expect(names).not.toMatch(raw);
    expect(names).toContain(`const s = "\\u{2066}\\u{200B}\\u{2069}" + y`);
    const [caret, target] = caretAndTarget(names, "y");
    expect(caret).toBe(target);
    // An unexpected U+202E: carets under all of `\u{202E}`.
    const syntax = renderDiagnostics(compileText(`const t = 1 \u202e+ 2\n`));
    expect(syntax).not.toMatch(raw);
    expect(syntax).toContain("unexpected character `\\u{202E}`");
    expect(syntax).toContain(" | const t = 1 \\u{202E}+ 2\n   |             ^^^^^^^^\n");
  });

  it("escapes them in messages, labels, notes and help", () => {
    const file = new SourceFile("m.lrk", "const x = 1\n");
    const d = error(
      "E0201",
      "cannot find `./\u202Egnp.lrk`",
      { file, span: { start: 6, end: 7 } },
      { label: "here\u200b", notes: [{ message: "note \u2066" }], help: "try \u0007 `x`\nnext" },
    );
    const rendered = renderDiagnostic(d);
    expect(rendered).not.toMatch(raw);
    expect(rendered).toContain("cannot find `./\\u{202E}gnp.lrk`");
    expect(rendered).toContain("^ here\\u{200B}");
    expect(rendered).toContain("note \\u{2066}");
    expect(rendered).toContain("try \\u{0007} `x`\nnext");
  });
});
