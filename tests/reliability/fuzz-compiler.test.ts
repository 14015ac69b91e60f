// The whole compiler under a seeded mutation fuzz (bench/fuzz-compiler.ts): mutants of the
// examples and of the standard library (imported from a mutated copy of stdlib/) go through
// `compile` and `planStep` of the step and init programs. Each must end in diagnostics or in a
// plan: no internal error, no hang, no diagnostic pointing outside its file. The mutants run in a
// worker thread from dist/ (build first). FUZZ_COMPILER_MUTANTS sets the count (default 200);
// `node dist/bench/fuzz-compiler.js 5000` runs a big one.
import { describe, expect, it } from "vitest";
import { portableTarget } from "../../cli/target.js";
import { compile, planStep } from "../../compiler/compile.js";
import { SourceFile } from "../../language/source.js";
import {
  loadCorpus,
  makeMutant,
  mutations,
  oddNumbers,
  runFuzz,
} from "../../bench/fuzz-compiler.js";
import { mulberry32 as rng } from "../../runtime/rng.js";

const mutants = Number(process.env.FUZZ_COMPILER_MUTANTS ?? 200);

describe("fuzzing the whole compiler", () => {
  it("mutates examples and stdlib files, compiled through an example that imports them", () => {
    const corpus = loadCorpus();
    expect(corpus.entries).toContain("examples/lora_finetune.lrk");
    // tiny_lm.lrk has no train block: it is fuzzed through the examples that import it.
    expect(corpus.entries).not.toContain("examples/tiny_lm.lrk");
    expect(corpus.usedBy.get("examples/tiny_lm.lrk")).toContain("examples/lora_finetune.lrk");
    expect(corpus.usedBy.get("stdlib/nn.lrk")).toContain("examples/mlp.lrk");
    expect(corpus.usedBy.get("stdlib/quant.lrk")).toEqual(["examples/svdquant_lora.lrk"]);
    const first = Array.from({ length: 50 }, (_, i) => makeMutant(corpus, 7, i));
    expect(first.some((m) => m.path.startsWith("stdlib/"))).toBe(true);
    expect(first.every((m) => corpus.usedBy.get(m.path)!.includes(m.entry))).toBe(true);
    // The same seed makes the same mutants.
    expect(makeMutant(corpus, 7, 3)).toEqual(first[3]);
  });

  it("replaces a number with an odd one, or a name with a number, and nothing else", () => {
    const text = "model M(d: int = 128) {\n  w = Linear(d, d)\n}\n";
    const random = rng(11);
    let numbers = 0;
    for (let i = 0; i < 40; i++) {
      const mutated = mutations.replaceNumber!(text, random);
      const replaced = /^model M\(d: int = (.+)\) \{\n  w = Linear\(d, d\)\n\}\n$/.exec(mutated);
      if (replaced) {
        expect(oddNumbers).toContain(replaced[1]);
        numbers++;
      } else {
        // A name replaced: the text has one name fewer and one number more.
        expect(mutated.match(/\b\d/g)!.length + (mutated.match(/-/g)?.length ?? 0)).toBeGreaterThan(
          1,
        );
      }
    }
    expect(numbers).toBeGreaterThan(20);
  });

  it(`${mutants} mutants end in diagnostics or a plan, none in an internal error or a hang`, async () => {
    const report = await runFuzz({ mutants, seed: 0x5eed, timeoutMs: 20_000 });
    const shown = report.findings
      .slice(0, 3)
      .map(
        (f) =>
          `#${f.mutant.index} ${f.kind}: ${f.mutant.path} (${f.mutant.applied.join(", ")}) via ${f.mutant.entry}\n${f.diff}\n${f.detail}`,
      );
    expect(shown).toEqual([]);
    expect(report.mutants).toBe(mutants);
    // The fuzz must reach past the parser: many mutants build, many fail later than syntax.
    expect(report.built).toBeGreaterThan(mutants / 10);
    expect(report.diagnostics).toBeGreaterThan(mutants / 3);
  }, 300_000);
});

/** A two-moons program whose model has `members` and whose forward is `body`. */
function program(members: string, body = "head(x)", model = "Net"): string {
  return `import std.nn.{Linear}
import std.optim.{adamw}
data moons = std.data.two_moons(n: 100, seed: 1)
model ${model}() {
  head = Linear(2, 2)
  ${members}
  forward(x: f32[B, 2]) -> f32[B, 2] = ${body}
}
train t {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with adamw(lr: 1e-2)
  steps 5
}
`;
}

/** The errors of compiling `text` (and planning it, when it compiles), as `CODE line: message`. */
function errorsOf(text: string): string[] {
  const file = new SourceFile("fuzzed.lrk", text);
  const { compiled, diagnostics } = compile(file);
  if (compiled) planStep(compiled.program.step, portableTarget);
  return diagnostics
    .filter((d) => d.severity === "error")
    .map((d) => `${d.code} ${d.at ? d.at.file.position(d.at.span.start).line : "-"}: ${d.message}`);
}

// What the fuzz found, each reduced to its smallest program: the compiler recursed until the
// stack overflowed ("a bug in lrkc") where the program was at fault.
describe("definitions that refer to themselves (found by the fuzz)", () => {
  it("a member defined in terms of itself is E0210 at the member (was a stack overflow)", () => {
    // The fuzz's mutant: tiny_lm.lrk with `ln1 = LayerNorm(d)` replaced by `ln1 = ln1(d)`.
    expect(errorsOf(program("ln1 = ln1(2)", "head(ln1(x))"))).toEqual([
      "E0210 6: `ln1` is defined in terms of itself",
    ]);
    expect(errorsOf(program("v = v * 2", "head(x) * v"))).toEqual([
      "E0210 6: `v` is defined in terms of itself",
    ]);
    expect(errorsOf(program("a = b * 2\n  b = a + 1", "head(x) * a"))).toEqual([
      "E0210 6: `a` is defined in terms of itself",
    ]);
    expect(errorsOf(program("const c = c + 1", "head(x) * c"))).toEqual([
      "E0210 6: `c` is defined in terms of itself",
    ]);
    // The fuzz's mutant of stdlib/quant.lrk: `const (svd_split, L2, R) = svd_split(…)`.
    expect(errorsOf(program("const (a, b) = (b * 2, 1)", "head(x) * a"))).toEqual([
      "E0210 6: `b` is defined in terms of itself",
    ]);
    // A member that is never used is never evaluated, and a member may use another one.
    expect(errorsOf(program("unused = unused(2)"))).toEqual([]);
    expect(errorsOf(program("a = 2\n  b = a * a", "head(x) * b"))).toEqual([]);
  });

  it("a function or forward that calls itself without end is E0210 at the call", () => {
    expect(errorsOf(program("f(x) = f(x)", "head(f(x))"))).toEqual([
      "E0210 6: `f` is called 200 calls deep: a recursion that does not end",
    ]);
    expect(errorsOf(program("f(x) = g(x) + 1\n  g(x) = f(x)", "head(f(x))"))[0]).toMatch(
      /^E0210 .*: `[fg]` is called 200 calls deep/,
    );
    expect(errorsOf(program("", "forward(x)"))).toEqual([
      "E0210 7: `forward` is called 200 calls deep: a recursion that does not end",
    ]);
  });

  it("a recursion that ends at compile time still compiles", () => {
    const members = `twice(x: f32[B, 2], n: int) -> f32[B, 2] {
    if n == 0 {
      return x
    }
    return twice(x * 2, n - 1)
  }`;
    expect(errorsOf(program(members, "head(twice(x, 3))"))).toEqual([]);
  });

  it("a model that contains itself is E0210 (was a stack overflow)", () => {
    const errors = errorsOf(program("inner = Net()"));
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.every((e) => e.startsWith("E0210 "))).toBe(true);
    expect(errors[0]).toContain("`Net` contains itself: modules nest more than 100 deep");
    // Twice per level would be 2^100 instantiations if each retried after the error.
    const started = performance.now();
    expect(errorsOf(program("left = Net()\n  right = Net()"))[0]).toContain(
      "`Net` contains itself",
    );
    expect(performance.now() - started).toBeLessThan(10_000);
  });
});

describe("models too large to hold (found by the fuzz)", () => {
  it("a block repeated 65536 times is E0401 at the model line at once (took 23 s to instantiate)", () => {
    // The fuzz's mutant: tiny_lm.lrk with `layers: int = 65536`.
    const block = ["a = Linear(128, 512)", "b = Linear(512, 128)", "c = Linear(128, 128)"];
    const text = program(`blocks[65536] {\n    ${block.join("\n    ")}\n  }`);
    const started = performance.now();
    expect(errorsOf(text)).toEqual([
      "E0401 14: this model has 9.71e+9 parameter elements, more than lrk can hold (2^31 - 1)",
    ]);
    // Making the 65536 copies before counting took 7.5 s here (23 s for the tiny LM's blocks).
    expect(performance.now() - started).toBeLessThan(2_000);
    // Below the limit, a repeat stays valid.
    expect(errorsOf(program("blocks[3] {\n    up = Linear(2, 2)\n  }"))).toEqual([]);
  });
});
