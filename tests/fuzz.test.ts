// Fuzzing the front end with a fixed seed: thousands of mutated programs (tokens deleted,
// duplicated and swapped, truncations, random bytes). The parser must never throw, must finish
// each input quickly, and must return an AST with diagnostics whose spans lie inside the input.
// Whatever parses cleanly must also survive the formatter round trip.
import { describe, expect, it } from "vitest";
import { format } from "../language/format.js";
import { lex } from "../language/lexer.js";
import { SourceFile } from "../language/source.js";
import { lrkFiles, parseText, readRepoFile, withoutSpans } from "./helpers.js";

const builtIn = `import std.nn.{Linear, LayerNorm}
import std.adapters.{lora}
/* a block comment */
model Mlp(d: int, hidden: int = 4 * d) {
  up = Linear(d, hidden)
  down = Linear(hidden, d)
  blocks[2] {
    ln = LayerNorm(d)
  }
  forward(x: f32[B, d]) -> f32[B, d] {
    let h = gelu(up(x)) // activation
    for b in blocks {
      h = h + b.ln(h)
    }
    return down(h)[:, 1:] @ eye(d)^T
  }
}
optimizer sgd(lr: float, momentum: float = 0) on param: f32[...] {
  state buf = zeros_like(param)
  update(g) {
    buf = momentum * buf + g
    param -= lr * buf
  }
}
train t {
  model Mlp(d: 8)
  data std.data.arithmetic(digits: 2, seed: 1)
  freeze **
  adapt blocks[0..2].{up, down}, *_proj where rows >= 4 with lora(rank: 2, alpha: 4)
  optimize adapters with sgd(lr: 0.1)
  steps 100
  eval every 10 on arith.valid
}
`;
import { mulberry32 as rng } from "../runtime/rng.js";

function corpus(): string[] {
  return [builtIn, ...lrkFiles().map(readRepoFile)];
}

type Mutation = (text: string, random: () => number) => string;

function tokenRanges(text: string): [number, number][] {
  const { tokens } = lex(new SourceFile("fuzz.lrk", text));
  return tokens.map((t) => [t.startOffset, t.endOffset! + 1]);
}

const pick = <T>(items: T[], random: () => number): T =>
  items[Math.floor(random() * items.length)]!;

const mutations: Record<string, Mutation> = {
  deleteToken(text, random) {
    const tokens = tokenRanges(text);
    if (tokens.length === 0) return text;
    const [s, e] = pick(tokens, random);
    return text.slice(0, s) + text.slice(e);
  },
  duplicateToken(text, random) {
    const tokens = tokenRanges(text);
    if (tokens.length === 0) return text;
    const [s, e] = pick(tokens, random);
    return text.slice(0, e) + " " + text.slice(s, e) + text.slice(e);
  },
  swapTokens(text, random) {
    const tokens = tokenRanges(text);
    if (tokens.length < 2) return text;
    let [a, b] = [pick(tokens, random), pick(tokens, random)];
    if (a[0] > b[0]) [a, b] = [b, a];
    if (a[1] > b[0]) return text;
    return (
      text.slice(0, a[0]) +
      text.slice(b[0], b[1]) +
      text.slice(a[1], b[0]) +
      text.slice(a[0], a[1]) +
      text.slice(b[1])
    );
  },
  truncate(text, random) {
    return text.slice(0, Math.floor(random() * text.length));
  },
  injectBytes(text, random) {
    const at = Math.floor(random() * text.length);
    const alphabet = [
      "\0",
      "\x7f",
      "\u00e9",
      "\u{1F600}",
      "\uFEFF",
      "\r",
      "\n",
      '"',
      "/*",
      "*/",
      "//",
      "{",
      "}",
      "(",
      ")",
      "[",
      "]",
      "^",
      "**",
      "..",
      "@",
      "#",
      "$",
      "`",
      "\\",
    ];
    let junk = "";
    const n = 1 + Math.floor(random() * 4);
    for (let i = 0; i < n; i++) {
      junk +=
        random() < 0.5 ? pick(alphabet, random) : String.fromCharCode(Math.floor(random() * 0x2ff));
    }
    return text.slice(0, at) + junk + text.slice(at);
  },
};

describe("fuzzing the parser", () => {
  it("never throws, stays fast, and keeps spans inside the input", () => {
    const random = rng(0x1a2b3c);
    const sources = corpus();
    const names = Object.keys(mutations);
    let parsedCleanly = 0;
    let slowest = 0;
    const runs = 3000;
    for (let i = 0; i < runs; i++) {
      let text = pick(sources, random);
      const steps = 1 + Math.floor(random() * 3);
      const applied: string[] = [];
      for (let s = 0; s < steps; s++) {
        const name = pick(names, random);
        applied.push(name);
        text = mutations[name]!(text, random);
      }
      const started = performance.now();
      let result: ReturnType<typeof parseText>;
      try {
        result = parseText(text, "fuzz.lrk");
      } catch (e) {
        throw new Error(
          `parser threw on input #${i} (${applied.join(", ")}): ${(e as Error).stack}\n---\n${text}`,
        );
      }
      slowest = Math.max(slowest, performance.now() - started);
      expect(result.program.kind).toBe("Program");
      for (const d of result.diagnostics) {
        const span = d.at!.span;
        if (!(span.start >= 0 && span.start <= span.end && span.end <= text.length)) {
          throw new Error(
            `diagnostic span ${span.start}..${span.end} outside input #${i} of length ${text.length}: ${d.message}`,
          );
        }
      }
      if (result.diagnostics.length === 0) {
        parsedCleanly++;
        const formatted = format(result.program, result.file);
        const again = parseText(formatted, "fuzz.lrk");
        if (
          again.diagnostics.length > 0 ||
          JSON.stringify(withoutSpans(again.program.items)) !==
            JSON.stringify(withoutSpans(result.program.items))
        ) {
          throw new Error(
            `format round trip changed input #${i} (${applied.join(", ")}):\n${text}\n--- formatted ---\n${formatted}\n${again.diagnostics.map((d) => d.message).join("\n")}`,
          );
        }
      }
    }
    // Each input is small: a generous per-input bound still catches exponential backtracking.
    expect(slowest).toBeLessThan(2000);
    // The mutations must leave some inputs valid, or the round-trip half tests nothing.
    expect(parsedCleanly).toBeGreaterThan(runs / 40);
  });
});
