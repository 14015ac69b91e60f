// The spec's examples are tests: every ```lrk block in spec/language.md, spec/diagnostics.md and
// spec/compiler.md must parse without diagnostics and format stably, every ```lrk-error block must
// fail to parse (with the code its first-line `// error: E0xxx` comment names), every
// ```lrk-check-error block (a program that parses but that `lrkc check` rejects) must parse cleanly
// and really fail `lrkc check` with the code it names, every ```lrk-check-warning block must pass
// `lrkc check` with the warning it names, and spec/diagnostics.md must document exactly the codes
// lrkc defines.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { analyze } from "../compiler/compile.js";
import { allCodes, codeTitles, type DiagnosticCode } from "../language/codes.js";
import { hasErrors, renderDiagnostics, type Diagnostic } from "../language/diagnostics.js";
import { format } from "../language/format.js";
import { parse } from "../language/parse.js";
import { SourceFile } from "../language/source.js";
import { prepare } from "./program-helpers.js";

const specFiles = ["spec/language.md", "spec/diagnostics.md", "spec/compiler.md"] as const;

interface CodeBlock {
  /** The markdown file, relative to the repository root. */
  file: string;
  /** 1-based line of the opening fence. */
  line: number;
  /** The info string: `lrk`, `lrk-error`, `text`, … */
  info: string;
  text: string;
}

function readSpec(file: string): string {
  return readFileSync(fileURLToPath(new URL(`../${file}`, import.meta.url)), "utf8");
}

/** Every fenced code block of a markdown text (``` or ~~~ fences, possibly indented). */
function codeBlocks(file: string, markdown: string): CodeBlock[] {
  const lines = markdown.split(/\r?\n/);
  const blocks: CodeBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^( {0,3})(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/.exec(lines[i]!);
    if (!open) continue;
    const [, indent, fence, info] = open;
    const body: string[] = [];
    let j = i + 1;
    const close = new RegExp(`^ {0,3}${fence![0]}{${fence!.length},}\\s*$`);
    while (j < lines.length && !close.test(lines[j]!)) {
      const l = lines[j]!;
      body.push(l.startsWith(indent!) ? l.slice(indent!.length) : l.trimStart());
      j++;
    }
    if (j >= lines.length) throw new Error(`${file}:${i + 1}: code block is never closed`);
    blocks.push({ file, line: i + 1, info: info!, text: body.join("\n") + "\n" });
    i = j;
  }
  return blocks;
}

const blocks = specFiles.flatMap((file) => codeBlocks(file, readSpec(file)));
const examples = blocks.filter((b) => b.info === "lrk");
const errorExamples = blocks.filter((b) => b.info === "lrk-error");
const checkErrorExamples = blocks.filter((b) => b.info === "lrk-check-error");
const checkWarningExamples = blocks.filter((b) => b.info === "lrk-check-warning");
/** Blocks that must parse: examples, and programs that only later stages reject or warn about. */
const parseable = [...examples, ...checkErrorExamples, ...checkWarningExamples];
const lrkInfos = ["lrk", "lrk-error", "lrk-check-error", "lrk-check-warning"];

/**
 * The codes a block's first line names: `// error: E0101`, or `// warning: W0301` in a
 * `lrk-check-warning` block (several may be listed).
 */
function annotatedCodes(b: CodeBlock): string[] | undefined {
  const firstLine = b.text.split("\n")[0]!;
  const word = b.info === "lrk-check-warning" ? "warning" : "error";
  const annotated = new RegExp(`^\\s*//\\s*${word}:\\s*(.*)$`).exec(firstLine);
  return annotated ? (annotated[1]!.match(/[EW]\d{4}/g) ?? []) : undefined;
}

function where(b: CodeBlock): string {
  return `${b.file}:${b.line}`;
}

/** What a failure message shows of a block: where it is and its first lines. */
function describeBlock(b: CodeBlock): string {
  const lines = b.text.trimEnd().split("\n");
  const shown = lines.slice(0, 6).map((l) => `    ${l}`);
  if (lines.length > 6) shown.push(`    … (${lines.length - 6} more lines)`);
  return `the \`\`\`${b.info} block at ${where(b)}:\n${shown.join("\n")}`;
}

function parseBlock(b: CodeBlock, text = b.text) {
  const file = new SourceFile(`${where(b)}.lrk`, text);
  return { file, ...parse(file) };
}

function show(diagnostics: Diagnostic[]): string {
  return renderDiagnostics(diagnostics);
}

/** Every block is checked in an empty folder of its own, so that relative paths resolve beside it. */
const scratch = mkdtempSync(join(tmpdir(), "lrk-spec-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/**
 * What `lrkc check` reports for a block, found as cli/check.ts finds it: the block is written to
 * `example.lrk` in an empty folder and analyzed; if that finds no error, each of its train blocks
 * is compiled through to its training step.
 */
function checkBlock(b: CodeBlock): Diagnostic[] {
  const dir = mkdtempSync(join(scratch, "block-"));
  const path = join(dir, "example.lrk");
  writeFileSync(path, b.text);
  const file = new SourceFile(path, b.text);
  const analysis = analyze(file);
  const diagnostics = [...analysis.diagnostics];
  if (!analysis.diagnostics.some((d) => d.severity === "error")) {
    for (const { spec } of analysis.trains)
      diagnostics.push(...prepare(file, { train: spec.decl.name.name }).diagnostics);
  }
  return diagnostics;
}

describe("spec code blocks", () => {
  it("finds the spec's examples", () => {
    expect(blocks.length).toBeGreaterThan(0);
    expect(errorExamples.length).toBeGreaterThan(0);
  });

  it("keeps at least 40 lrk examples in the language reference", () => {
    const inLanguage = examples.filter((b) => b.file === "spec/language.md").length;
    expect(inLanguage, "spec/language.md should stay a real reference").toBeGreaterThanOrEqual(40);
  });

  it("uses only known info strings for lrk code", () => {
    const odd = blocks.filter((b) => /lrk/.test(b.info) && !lrkInfos.includes(b.info));
    expect(odd.map(where), `use one of ${lrkInfos.join(", ")}`).toEqual([]);
  });
});

describe.each(parseable.map((b) => [`${b.info} ${where(b)}`, b] as const))("```%s", (_, block) => {
  it("parses without diagnostics (but the warning a warning example is about)", () => {
    const expected = /^\/\/ warning: (W\d{4})/.exec(block.text)?.[1];
    const diagnostics = parseBlock(block).diagnostics.filter(
      (d) => !(d.severity === "warning" && d.code === expected),
    );
    if (diagnostics.length > 0) {
      expect.fail(`${describeBlock(block)}\nhas diagnostics:\n${show(diagnostics)}`);
    }
  });

  it("formats stably: fmt(fmt(x)) == fmt(x), and fmt(x) parses", () => {
    const { file, program, diagnostics } = parseBlock(block);
    if (hasErrors(diagnostics)) return; // reported by the test above
    const once = format(program, file);
    const reparsed = parseBlock(block, once);
    if (hasErrors(reparsed.diagnostics)) {
      expect.fail(
        `${describeBlock(block)}\nformats to text that does not parse:\n${once}\n${show(reparsed.diagnostics)}`,
      );
    }
    const twice = format(reparsed.program, reparsed.file);
    expect(twice, `formatting ${describeBlock(block)}\nis not idempotent`).toBe(once);
  });
});

describe.each(errorExamples.map((b) => [where(b), b] as const))(
  "```lrk-error block at %s",
  (_, block) => {
    it("fails to parse, with the code it names", () => {
      const { diagnostics } = parseBlock(block);
      expect(
        diagnostics.length,
        `${describeBlock(block)}\nshould have at least one diagnostic`,
      ).toBeGreaterThan(0);
      const wanted = annotatedCodes(block);
      if (wanted === undefined) return;
      expect(wanted.length, `${where(block)}: \`// error:\` names no code`).toBeGreaterThan(0);
      const found = diagnostics.map((d) => d.code);
      for (const code of wanted) {
        if (!found.includes(code as DiagnosticCode)) {
          expect.fail(
            `${describeBlock(block)}\nshould report ${code}, but reports ${found.join(", ")}:\n${show(diagnostics)}`,
          );
        }
      }
    });
  },
);

/** The codes a block names, checked to be real codes of lrkc. */
function namedCodes(block: CodeBlock, word: "error" | "warning"): DiagnosticCode[] {
  const wanted = annotatedCodes(block);
  expect(wanted, `${describeBlock(block)}\nshould start with \`// ${word}: E0xxx\``).toBeDefined();
  expect(wanted!.length, `${where(block)}: \`// ${word}:\` names no code`).toBeGreaterThan(0);
  const known = new Set<string>(allCodes);
  expect(
    wanted!.filter((code) => !known.has(code)),
    `unknown codes at ${where(block)}`,
  ).toEqual([]);
  return wanted as DiagnosticCode[];
}

describe.each(checkErrorExamples.map((b) => [where(b), b] as const))(
  "```lrk-check-error block at %s",
  (_, block) => {
    it("names the real code it demonstrates", () => {
      namedCodes(block, "error");
    });

    it("fails `lrkc check` with that code", () => {
      const wanted = namedCodes(block, "error");
      const diagnostics = checkBlock(block);
      const errors = diagnostics.filter((d) => d.severity === "error").map((d) => d.code);
      for (const code of wanted) {
        if (!errors.includes(code)) {
          expect.fail(
            `${describeBlock(block)}\nshould fail \`lrkc check\` with ${code}, but it reports ${errors.join(", ") || "no error"}:\n${show(diagnostics)}`,
          );
        }
      }
    });
  },
);

describe.each(checkWarningExamples.map((b) => [where(b), b] as const))(
  "```lrk-check-warning block at %s",
  (_, block) => {
    it("passes `lrkc check` with the warning it names", () => {
      const wanted = namedCodes(block, "warning");
      const diagnostics = checkBlock(block);
      const errors = diagnostics.filter((d) => d.severity === "error");
      if (errors.length > 0)
        expect.fail(`${describeBlock(block)}\nshould pass \`lrkc check\`, but:\n${show(errors)}`);
      const warnings = diagnostics.filter((d) => d.severity === "warning").map((d) => d.code);
      for (const code of wanted) {
        if (!warnings.includes(code)) {
          expect.fail(
            `${describeBlock(block)}\nshould warn with ${code}, but it reports ${warnings.join(", ") || "nothing"}:\n${show(diagnostics)}`,
          );
        }
      }
    });
  },
);

describe("spec/diagnostics.md", () => {
  const text = readSpec("spec/diagnostics.md");
  const headings = [...text.matchAll(/^###\s+([EW]\d{4})\b:?\s*(.*)$/gm)].map((m) => ({
    code: m[1]!,
    title: m[2]!.trim(),
  }));

  it("has a section for every diagnostic code", () => {
    const documented = new Set(headings.map((h) => h.code));
    const missing = allCodes.filter((code) => !documented.has(code));
    expect(missing, "add a `### E0xxx: title` section to spec/diagnostics.md").toEqual([]);
  });

  it("documents only real codes, each once", () => {
    const known = new Set<string>(allCodes);
    expect(headings.filter((h) => !known.has(h.code)).map((h) => h.code)).toEqual([]);
    const seen = headings.map((h) => h.code);
    expect(seen.filter((code, i) => seen.indexOf(code) !== i)).toEqual([]);
  });

  it("titles each section as language/codes.ts does", () => {
    for (const h of headings) {
      const title = codeTitles[h.code as DiagnosticCode];
      if (title !== undefined) expect(h.title, `heading of ${h.code}`).toBe(title);
    }
  });
});
