// Hostile and unusual inputs: each gets a clear diagnostic or parses, never a crash.
import { describe, expect, it } from "vitest";
import type * as A from "../language/ast.js";
import { format } from "../language/format.js";
import { parseText, withoutSpans } from "./helpers.js";

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
