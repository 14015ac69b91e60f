// `lrkc check` on a file of models without a train block (compiler/check-models.ts): each model
// whose parameters all have defaults has its forward lowered on inputs of its declared types, the
// sizes nothing binds assumed three times; only a problem found every time is reported.
import { describe, expect, it } from "vitest";
import { check } from "../compiler/compile.js";
import { SourceFile } from "../language/source.js";

function checked(text: string) {
  const { diagnostics } = check(new SourceFile("models.lrk", text));
  const at = (d: (typeof diagnostics)[number]) =>
    d.at ? text.slice(d.at.span.start, d.at.span.end) : undefined;
  return diagnostics.map((d) => ({ ...d, text: at(d) }));
}

const imports = `import std.nn.{Linear, Embedding}\n`;

describe("models checked without a train block", () => {
  it("a forward that returns the wrong shape: at the declared type, with the sizes assumed", () => {
    const [d, ...rest] = checked(`${imports}
model Net(hidden: int = 16) {
  a = Linear(4, hidden)
  b = Linear(hidden, 3)
  forward(x: f32[B, 4]) -> f32[B, 2] = b(relu(a(x)))
}`);
    expect(rest).toEqual([]);
    expect(d!.code).toBe("E0401");
    expect(d!.text).toBe("f32[B, 2]");
    expect(d!.message).toContain("the result should be f32[B, 2]");
    expect(d!.notes.map((n) => n.message)).toContain(
      "found checking `Net`'s forward with its defaults and B = 7 (no train block gives these sizes)",
    );
  });

  it("a product of mismatched sizes inside, and an undefined name", () => {
    const found = checked(`${imports}
model Bad(d: int = 8) {
  l = Linear(d, d)
  forward(x: f32[B, d], y: f32[B, 3]) -> f32[B, d] = l(x) + y
}
model Typo(d: int = 8) {
  l = Linear(d, d)
  forward(x: f32[B, d]) -> f32[B, d] = l(x) * scal
}`);
    expect(found.map((d) => [d.code, d.text])).toEqual([
      ["E0401", "l(x) + y"],
      ["E0204", "scal"],
    ]);
  });

  it("beside a train block: the models it trains are checked by compiling it, the others on their own", () => {
    const found = checked(`${imports}import std.optim.{adamw}
data moons = std.data.two_moons(n: 64, seed: 1)
model Good(hidden: int = 8) {
  a = Linear(2, hidden)
  b = Linear(hidden, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = b(relu(a(x)))
}
model Unused(hidden: int = 8) {
  a = Linear(2, hidden)
  forward(x: f32[B, 2]) -> f32[B, 3] = a(x)
}
train t {
  model Good()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with adamw(lr: 1e-2)
  steps 1
  batch 8
}`);
    expect(found.map((d) => [d.code, d.text])).toEqual([["E0401", "f32[B, 3]"]]);
    expect(found[0]!.notes.at(-1)!.message).toContain("found checking `Unused`'s forward");
  });

  it("a model its defaults cannot make: its own error, not the forward's that follow from it", () => {
    const found = checked(`${imports}
model Zero(n: int = 0) {
  l = Linear(n, 2)
  forward(x: f32[B, n]) -> f32[B, 2] = l(x)
}
model Loop(d: int = 4) {
  inner = Loop(d)
  forward(x: f32[B, d]) -> f32[B, d] = inner(x)
}`);
    expect(found.map((d) => [d.code, d.text])).toEqual([
      ["E0402", "Linear(n, 2)"],
      ["E0210", "Loop(d)"],
    ]);
  });

  it("no false alarm: sizes that must divide (heads) or stay small (a context length), and models that need arguments are left alone", () => {
    expect(
      checked(`${imports}
model Heads(d: int = 16, h: int = 4, ctx: int = 8) {
  proj = Linear(d, d)
  pos = Embedding(ctx, d)
  forward(x: f32[B, T, d]) -> f32[B, h, T, d / h] {
    let y = proj(x) + pos(arange(T))
    return transpose(reshape(y, [B, T, h, d / h]), 1, 2)
  }
}
model Patches(p: int = 5) {
  forward(x: f32[B, N]) -> f32[B, N / p, p] = reshape(x, [B, N / p, p])
}
model Needs(n: int) {
  l = Linear(n, 2)
  forward(x: f32[B, 3]) -> f32[B, 2] = l(x)
}`),
    ).toEqual([]);
  });
});
