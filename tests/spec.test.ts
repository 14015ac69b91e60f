// The spec's examples are tests: every ```lrk block in spec/language.md and spec/diagnostics.md
// must parse without diagnostics and format stably, every ```lrk-error block must fail to parse
// (with the code its first-line `// error: E0xxx` comment names), every ```lrk-check-error block
// (a program that parses but that `lrkc check` rejects) must parse cleanly and name a real code,
// and spec/diagnostics.md must document exactly the codes lrkc defines.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { allCodes, codeTitles, type DiagnosticCode } from "../language/codes.js";
import { renderDiagnostics, type Diagnostic } from "../language/diagnostics.js";
import { format } from "../language/format.js";
import { parse } from "../language/parse.js";
import { SourceFile } from "../language/source.js";

const specFiles = ["spec/language.md", "spec/diagnostics.md"] as const;

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
/** Blocks that must parse: examples, and programs that only later stages reject. */
const parseable = [...examples, ...checkErrorExamples];
const lrkInfos = ["lrk", "lrk-error", "lrk-check-error"];

/** The codes a block's first line names: `// error: E0101` (several may be listed). */
function annotatedCodes(b: CodeBlock): string[] | undefined {
  const firstLine = b.text.split("\n")[0]!;
  const annotated = /^\s*\/\/\s*error:\s*(.*)$/.exec(firstLine);
  return annotated ? (annotated[1]!.match(/E\d{4}/g) ?? []) : undefined;
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
  it("parses without diagnostics", () => {
    const { diagnostics } = parseBlock(block);
    if (diagnostics.length > 0) {
      expect.fail(`${describeBlock(block)}\nhas diagnostics:\n${show(diagnostics)}`);
    }
  });

  it("formats stably: fmt(fmt(x)) == fmt(x), and fmt(x) parses", () => {
    const { file, program, diagnostics } = parseBlock(block);
    if (diagnostics.length > 0) return; // reported by the test above
    const once = format(program, file);
    const reparsed = parseBlock(block, once);
    if (reparsed.diagnostics.length > 0) {
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

describe.each(checkErrorExamples.map((b) => [where(b), b] as const))(
  "```lrk-check-error block at %s",
  (_, block) => {
    it("names the real code it demonstrates", () => {
      const wanted = annotatedCodes(block);
      expect(
        wanted,
        `${describeBlock(block)}\nshould start with \`// error: E0xxx\``,
      ).toBeDefined();
      expect(wanted!.length).toBeGreaterThan(0);
      const known = new Set<string>(allCodes);
      expect(
        wanted!.filter((code) => !known.has(code)),
        `unknown codes at ${where(block)}`,
      ).toEqual([]);
    });
  },
);

describe("spec/diagnostics.md", () => {
  const text = readSpec("spec/diagnostics.md");
  const headings = [...text.matchAll(/^###\s+(E\d{4})\b:?\s*(.*)$/gm)].map((m) => ({
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
