// Syntax errors: recovery reports every independent error, in the documented format, with codes,
// spans inside the file, and no stack traces; --json carries the same diagnostics.
import { describe, expect, it } from "vitest";
import { renderDiagnostic, renderDiagnostics } from "../language/diagnostics.js";
import { parseText } from "./helpers.js";

const threeErrors = `model M(d: int) {
  l = Linear(d d)
  forward(x) = l(x)
}

train t {
  adapt blocks.*. with lora(rank: 4)
  batch 4
}

const lr = (1, 
const ok = 3
`;

describe("syntax diagnostics", () => {
  it("reports each of three independent errors once", () => {
    const { diagnostics } = parseText(threeErrors, "three.lrk");
    expect(diagnostics.map((d) => d.code)).toEqual(["E0101", "E0101", "E0101"]);
    expect(diagnostics.map((d) => d.at!.file.position(d.at!.span.start))).toEqual([
      { line: 2, column: 16 },
      { line: 7, column: 19 },
      { line: 12, column: 1 },
    ]);
    expect(diagnostics[0]!.message).toBe("expected `)` but found `d`");
    expect(diagnostics[1]!.message).toContain(
      "expected a selector component (a name, `*`, `**` or `{…}`) but found `with`",
    );
    expect(diagnostics[2]!.message).toBe("expected `)` but found `const`");
  });

  it("renders file:line:col, the code, and a caret under the span", () => {
    const { diagnostics } = parseText(threeErrors, "three.lrk");
    expect(renderDiagnostic(diagnostics[0]!)).toBe(
      [
        "three.lrk:2:16: error[E0101]: expected `)` but found `d`",
        "   |",
        " 2 |   l = Linear(d d)",
        "   |                ^",
      ].join("\n"),
    );
    expect(renderDiagnostics(diagnostics)).toMatch(/\n3 errors\n$/);
  });

  it("says what is expected in the user's terms", () => {
    const cases: [string, string][] = [
      ["model M {\n  = 3\n}", "expected a member"],
      ["train t {\n  stepz 10\n}", "expected a train setting"],
      ["const x = \n", "expected an expression but found the end of the file"],
      ["modle M {}", "expected a declaration"],
      ["train t {\n  freeze blocks.(q)\n}", "expected a selector component"],
    ];
    for (const [text, message] of cases) {
      const { diagnostics } = parseText(text);
      expect(diagnostics.length, text).toBeGreaterThan(0);
      expect(diagnostics[0]!.message, text).toContain(message);
    }
  });

  it("suggests ^ for a ** power", () => {
    const { diagnostics } = parseText("const x = a ** 2");
    expect(diagnostics).toHaveLength(1);
    expect(diagnostics[0]!.code).toBe("E0107");
    expect(diagnostics[0]!.help).toContain("x ^ 2");
  });

  it("puts an error at the end of the file just past the last token", () => {
    const text = "model M {\n  l = Linear(4, 4)\n";
    const { diagnostics } = parseText(text);
    expect(diagnostics).toHaveLength(1);
    expect(diagnostics[0]!.message).toBe("expected a member or `}` but found the end of the file");
    expect(diagnostics[0]!.at!.span.start).toBe(text.trimEnd().length);
  });
});
