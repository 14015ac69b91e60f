// Resolution, instantiation and placement: the module tree, which rule places what, and one test
// per class of semantic error asserting its code, span and message.
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { analyze } from "../compiler/compile.js";
import { SourceFile } from "../language/source.js";
import { compile, init, param, prepare } from "./program-helpers.js";

const header = `import std.nn.{Linear, LayerNorm}
import std.adapters.{lora, adalora, adalora_budget}
import std.optim.{adamw, galore}

model Net(d: int = 8, layers: int = 2) {
  blocks[layers] {
    attn = Linear(d, d)
    mlp = Linear(d, 4 * d)
    ln = LayerNorm(d)
  }
  head = Linear(d, 3)
}
`;

function run(train: string) {
  const text = header + train;
  const file = new SourceFile("test.lrk", text);
  const result = analyze(file);
  const at = (d: (typeof result.diagnostics)[number]) =>
    d.at ? text.slice(d.at.span.start, d.at.span.end) : undefined;
  return { ...result, text, at };
}

describe("instantiation and placement", () => {
  it("gives every parameter a path and a shape", () => {
    const r = run(`train t {
  model Net(d: 8)
  optimize ** with adamw(lr: 1e-3)
}`);
    expect(r.diagnostics).toEqual([]);
    const params = r.trains[0]!.placement.params;
    expect(params.map((p) => `${p.param.path} [${p.param.shape.join(",")}]`)).toEqual([
      "blocks.0.attn.weight [8,8]",
      "blocks.0.attn.bias [8]",
      "blocks.0.mlp.weight [32,8]",
      "blocks.0.mlp.bias [32]",
      "blocks.0.ln.weight [8]",
      "blocks.0.ln.bias [8]",
      "blocks.1.attn.weight [8,8]",
      "blocks.1.attn.bias [8]",
      "blocks.1.mlp.weight [32,8]",
      "blocks.1.mlp.bias [32]",
      "blocks.1.ln.weight [8]",
      "blocks.1.ln.bias [8]",
      "head.weight [3,8]",
      "head.bias [3]",
    ]);
    expect(params.every((p) => p.trainable && p.optimizer?.config.def.name.name === "adamw")).toBe(
      true,
    );
  });

  it("adapts exactly the selected modules, freezes, and lets the first optimize rule win", () => {
    const r = run(`train t {
  model Net()
  freeze **
  adapt blocks[1].attn, head with lora(rank: 2)
  adapt blocks.0.mlp where rows == 3 with lora(rank: 2)
  optimize blocks.*.attn.lora.* with galore(rank: 1)
  optimize adapters with adamw(lr: 1e-3)
}`);
    expect(r.diagnostics.map((d) => d.message)).toEqual([]);
    const { placement } = r.trains[0]!;
    expect(placement.adapters.map((a) => a.module.path)).toEqual(["blocks.1.attn", "head"]);
    const trainable = placement.params.filter((p) => p.trainable);
    expect(
      trainable.map((p) => [
        p.param.path,
        p.param.shape.join("x"),
        p.optimizer!.config.def.name.name,
      ]),
    ).toEqual([
      ["blocks.1.attn.lora.A", "2x8", "galore"],
      ["blocks.1.attn.lora.B", "8x2", "galore"],
      ["head.lora.A", "2x8", "adamw"],
      ["head.lora.B", "3x2", "adamw"],
    ]);
    expect(
      placement.params.filter((p) => p.origin === "model").every((p) => !p.trainable && p.frozenBy),
    ).toBe(true);
  });

  it("selects by shape in `where`: `shape == [..]`, `shape[i]`, `shape[-1]`", () => {
    const r = run(`train t {
  model Net()
  optimize ** where shape == [8, 8] with galore(rank: 1)
  optimize ** where ndim == 2 and shape[-1] == 8 and shape[0] != 8 with adamw(lr: 1e-3)
  optimize ** with adamw(lr: 1e-2)
}`);
    expect(r.diagnostics.map((d) => d.message)).toEqual([]);
    const rule = new Map(
      r.trains[0]!.placement.params.map((p) => [p.param.path, p.optimizer!.config.args.get("lr")]),
    );
    const by = (path: string) =>
      r.trains[0]!.placement.params.find((p) => p.param.path === path)!.optimizer!.config.def.name
        .name;
    expect(by("blocks.0.attn.weight")).toBe("galore"); // [8, 8]
    expect(by("blocks.1.mlp.weight")).toBe("adamw"); // [32, 8]
    expect(rule.get("blocks.1.mlp.weight")).toMatchObject({ value: 1e-3 });
    expect(by("head.weight")).toBe("adamw"); // [3, 8]
    expect(rule.get("head.bias")).toMatchObject({ value: 1e-2 }); // 1-d
  });

  it("attaches a budget to the modules adapted with its adapter", () => {
    const r = run(`train t {
  model Net()
  freeze **
  adapt blocks.*.{attn, mlp} with adalora(init_rank: 4)
  budget rank 6 over blocks.*.{attn, mlp} by adalora_budget()
  optimize adapters with adamw(lr: 1e-3)
}`);
    expect(r.diagnostics.map((d) => d.message)).toEqual([]);
    const budget = r.trains[0]!.placement.budgets[0]!;
    expect(budget.total).toBe(6);
    expect(budget.adapted.map((a) => a.module.path)).toEqual([
      "blocks.0.attn",
      "blocks.0.mlp",
      "blocks.1.attn",
      "blocks.1.mlp",
    ]);
  });
});

describe("semantic errors", () => {
  function only(train: string) {
    const r = run(train);
    const errors = r.diagnostics.filter((d) => d.severity === "error");
    expect(errors, r.diagnostics.map((d) => `${d.code} ${d.message}`).join("\n")).toHaveLength(1);
    return { d: errors[0]!, at: r.at(errors[0]!), all: r.diagnostics };
  }

  it("E0301: a selector that matches nothing, with a did-you-mean from real paths", () => {
    const { d, at } = only(`train t {
  model Net()
  freeze **
  adapt blocks.*.atn with lora(rank: 2)
  optimize adapters with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0301");
    expect(d.message).toBe("selector `blocks.*.atn` matches no module");
    expect(at).toBe("blocks.*.atn");
    expect(d.label).toBe("did you mean `blocks.*.attn`?");
  });

  it("E0402: a list index out of range in a selector predicate", () => {
    const { d, at } = only(`train t {
  model Net()
  optimize ** where shape[1] == 8 with adamw(lr: 1e-3)
  optimize ** with adamw(lr: 1e-2)
}`);
    expect(d.code).toBe("E0402");
    expect(d.message).toMatch(/^index 1 is out of range for /);
    expect(d.help).toMatch(/ndim == 2 and shape\[1\]/);
    expect(at).toBe("1");
  });

  it("E0302: an adapter applied to a module it cannot wrap", () => {
    const { d, at } = only(`train t {
  model Net()
  freeze **
  adapt blocks.0.ln with lora(rank: 2)
  optimize ** with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0302");
    expect(d.message).toBe(
      "adapter `lora` applies to `Linear` or `Conv1D` modules, but `blocks.0.ln` is a `LayerNorm`",
    );
    expect(at).toBe("blocks.0.ln");
  });

  it("E0303: an optimizer whose shape pattern does not fit a tensor", () => {
    const { d, at } = only(`train t {
  model Net()
  optimize blocks.*.attn with galore(rank: 2)
  optimize ** with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0303");
    expect(d.message).toBe(
      "optimizer `galore` applies to `f32[m, n]` tensors, but `blocks.0.attn.bias` is f32[8] (and 1 more)",
    );
    expect(at).toBe("blocks.*.attn");
    expect(d.help).toContain("where ndim == 2");
  });

  it("E0304: two rules in conflict", () => {
    const { d, at } = only(`train t {
  model Net()
  freeze **
  adapt blocks.*.attn with lora(rank: 2)
  adapt blocks.0.attn with adalora(init_rank: 2)
  optimize adapters with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0304");
    expect(d.message).toBe("`blocks.0.attn` is adapted twice");
    expect(at).toBe("blocks.0.attn");
    expect(d.notes[0]!.message).toContain("already adapted with `lora`");
  });

  it("E0305: a trainable tensor that no optimize rule covers", () => {
    const { d, at } = only(`train t {
  model Net()
  freeze blocks
  optimize head.weight with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0305");
    expect(d.message).toBe("1 trainable tensor has no optimizer: `head.bias`");
    expect(at).toBe("t");
  });

  it("W0301: an optimize rule shadowed by an earlier one is a warning", () => {
    const r = run(`train t {
  model Net()
  optimize ** with adamw(lr: 1e-3)
  optimize head with adamw(lr: 1e-2)
}`);
    expect(r.diagnostics.map((d) => [d.code, d.severity])).toEqual([["W0301", "warning"]]);
    expect(r.at(r.diagnostics[0]!)).toBe("head");
  });

  it("E0307: a budget over modules adapted with another adapter", () => {
    const { d } = only(`train t {
  model Net()
  freeze **
  adapt blocks.*.attn with lora(rank: 2)
  budget rank 4 over blocks.*.attn by adalora_budget()
  optimize adapters with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0307");
    expect(d.message).toBe(
      "budget `adalora_budget` controls modules adapted with `adalora`, but `blocks.0.attn` is adapted with `lora`",
    );
  });

  it("E0204: an undefined name, with a did-you-mean", () => {
    const { d, at } = only(`train t {
  model Nett()
  optimize ** with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0204");
    expect(d.message).toBe("`Nett` is not defined");
    expect(at).toBe("Nett");
    expect(d.help).toBe("did you mean `Net`?");
  });

  it("E0205: an unknown named argument", () => {
    const { d, at } = only(`train t {
  model Net(dim: 4)
  optimize ** with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0205");
    expect(d.message).toBe("`Net` has no parameter `dim`");
    expect(at).toBe("dim");
    expect(d.help).toBe("did you mean `d`?");
  });

  it("E0205: a missing required argument", () => {
    const { d } = only(`train t {
  model Net()
  optimize ** with adamw()
}`);
    expect(d.code).toBe("E0205");
    expect(d.message).toBe("`adamw` needs the argument `lr`");
  });

  it("E0206: the wrong kind of value for a rule", () => {
    const { d, at } = only(`train t {
  model Net()
  freeze **
  adapt head with adamw(lr: 1e-3)
  optimize ** with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0206");
    expect(d.message).toBe("`adapt` needs an adapter, not the optimizer `adamw(…)`");
    expect(at).toBe("adamw(lr: 1e-3)");
  });

  it("E0208: a train block without a model", () => {
    const { d, at } = only(`train t {
  steps 10
}`);
    expect(d.code).toBe("E0208");
    expect(at).toBe("t");
  });

  it("E0201 and E0203: a missing module and an import cycle", () => {
    const missing = analyze(new SourceFile("m.lrk", "import std.nnn.{Linear}\n"));
    expect(missing.diagnostics.map((d) => [d.code, d.message])).toEqual([
      ["E0201", "cannot find module `std.nnn`"],
    ]);
  });

  it("E0202: a name defined twice", () => {
    const r = analyze(new SourceFile("d.lrk", "const a = 1\nconst a = 2\n"));
    expect(r.diagnostics.map((d) => [d.code, d.message])).toEqual([
      ["E0202", "`a` is defined twice"],
    ]);
  });

  it("E0402: a dimension that is not an integer", () => {
    const { d, at } = only(`train t {
  model Net(d: 2.5)
  optimize ** with adamw(lr: 1e-3)
}`);
    expect(d.code).toBe("E0402");
    expect(d.message).toBe("`d` must be an integer, but `2.5` was given");
    expect(at).toBe("2.5");
  });

  it("E0203: an import cycle, reported on the import that closes it", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-cycle-"));
    writeFileSync(join(dir, "a.lrk"), 'import "./b.lrk".{B}\nconst A = 1\n');
    writeFileSync(join(dir, "b.lrk"), 'import "./a.lrk".{A}\nconst B = 2\n');
    const path = join(dir, "a.lrk");
    const r = analyze(new SourceFile(path, readFileSync(path, "utf8")));
    const cycle = r.diagnostics.filter((d) => d.code === "E0203");
    expect(cycle).toHaveLength(1);
    expect(cycle[0]!.message).toMatch(/^import cycle: .*a\.lrk → .*b\.lrk → .*a\.lrk$/);
    expect(cycle[0]!.at!.file.path).toMatch(/b\.lrk$/);
  });

  it("E0207: a member that does not exist, with a did-you-mean", () => {
    const r = run(`data arith = std.data.arithmetic(digits: 1)
const v = arith.vocabb
train t {
  model Net()
  optimize ** with adamw(lr: 1e-3)
}`);
    const d = r.diagnostics.find((x) => x.code === "E0207")!;
    expect(d.message).toBe("a data set has no member `vocabb`");
    expect(r.at(d)).toBe("vocabb");
    expect(d.help).toBe("did you mean `vocab`?");
  });

  it("E0209: asking for a train block that does not exist", () => {
    const text = header + "train alpha {\n  model Net()\n  optimize ** with adamw(lr: 1e-3)\n}\n";
    const r = analyze(new SourceFile("t.lrk", text), { train: "alpah" });
    expect(r.diagnostics.map((d) => [d.code, d.message, d.help])).toEqual([
      ["E0209", "t.lrk has no train block `alpah`", "did you mean `alpha`?"],
    ]);
  });

  it("E0206: an `at` action that assigns what it cannot is reported, not silently skipped", async () => {
    const { prepare } = await import("./program-helpers.js");
    const text =
      header +
      `data moons = std.data.two_moons(n: 50)
train t {
  model Net()
  data moons
  loss mean(model.head(batch.x @ ones(2, 8)))
  optimize ** with adamw(lr: 1e-3)
  at every 10 {
    x = 1
  }
}
`;
    const { diagnostics } = prepare(new SourceFile("at.lrk", text));
    expect(diagnostics.map((d) => [d.code, d.message])).toEqual([
      ["E0206", "`x` cannot be assigned in an action"],
    ]);
  });
});

describe("initial values that read other parameters", () => {
  const program = (members: string) => `import std.nn.{Linear}
import std.optim.{sgd}

model Net() {
${members}
  forward(x: f32[B, 2]) -> f32[B, 2] = x @ w
}

train t {
  model Net()
  data std.data.two_moons(n: 64)
  loss mean(model(batch.x) ^ 2)
  optimize ** with sgd(lr: 0.1)
}
`;

  it("a parameter read before its submodule is declared is initialized first", async () => {
    // `w` is placed before `l.weight`: it used to be E0206 at std.nn's `weight` line
    const run = compile(
      program("  param w: f32[2, 2] = l.weight[0:2, 0:2] * 2\n  l = Linear(2, 4)"),
    );
    const store = await init(run, true);
    const weight = param(store, "l.weight");
    expect([...param(store, "w")]).toEqual([...weight.slice(0, 4)].map((v) => v * 2));
  });

  it("E0206 at the initial value that closes a cycle, once", () => {
    const r = prepare(
      new SourceFile(
        "test.lrk",
        program("  param w: f32[2, 2] = v * 2\n  param v: f32[2, 2] = w + 1"),
      ),
    );
    expect(r.diagnostics.map((d) => [d.code, d.message])).toEqual([
      ["E0206", "the initial values of `w`, `v` read each other (`w` → `v` → `w`)"],
    ]);
    expect(r.diagnostics[0]!.at?.span.start).toBeGreaterThan(0);
  });
});
