// Ill-typed programs found by outside testing: each must get a diagnostic at the user's line from
// both `lrkc check` and `lrkc build` (run in process: tests/cli-in-process.ts), never exit 2
// ("a bug in lrkc") and never be accepted.
import { copyFileSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { lrkcInProcess } from "../cli-in-process.js";
import { root } from "../helpers.js";

const header = `import std.nn.{Linear}
import std.optim.{adamw}
data moons = std.data.two_moons(n: 100, seed: 1)
`;

/** A train block over the two-moons data set with `model M()`; `rules` replace the optimizer. */
function trainBlock(loss = "cross_entropy(model(batch.x), batch.y)", rules?: string): string {
  return `
train t {
  model M()
  data moons
  loss ${loss}
  ${rules ?? "optimize ** with adamw(lr: 1e-2)"}
  steps 5
  batch 8
}
`;
}

/** A model M over f32[B, 2] inputs whose forward is `body`, with `members` before it. */
function modelWith(body: string, members = "head = Linear(2, 2)"): string {
  return `model M() {
  ${members}
  forward(x: f32[B, 2]) -> f32[B, 2] = ${body}
}
`;
}

interface Case {
  name: string;
  program: string;
  code: string;
  message: string;
  /** The text the diagnostic's line:col points at: its first occurrence in the program. */
  at: string;
  /** Exit status of both commands: 1 for errors, 0 where the diagnostic is a warning. */
  status?: number;
}

function lineCol(text: string, snippet: string): string {
  const index = text.indexOf(snippet);
  if (index < 0) throw new Error(`test setup: ${snippet} is not in the program`);
  const before = text.slice(0, index).split("\n");
  return `${before.length}:${before[before.length - 1]!.length + 1}`;
}

/** `lrkc <args>` in `cwd`, in process (what is checked is the commands' output and status). */
async function run(args: string[], cwd: string) {
  const r = await lrkcInProcess(args, cwd);
  return { status: r.status, output: r.stdout + r.stderr };
}

const cases: Case[] = [
  {
    name: "1: a zero-size dimension",
    program:
      header + modelWith("head(l1(x))", "l1 = Linear(2, 0)\n  head = Linear(0, 2)") + trainBlock(),
    code: "E0402",
    message: "a dimension must be at least 1, but this one is 0",
    at: "Linear(2, 0)",
  },
  {
    name: "1: an empty slice",
    program: header + modelWith("head(x)[1:1, :]") + trainBlock(),
    code: "E0401",
    message: "this slice of f32[B, 2] is empty (f32[0, 2])",
    at: "head(x)[1:1, :]",
  },
  {
    name: "2: svdquant rank 0",
    program:
      "import std.quant.{svdquant}\n" +
      header +
      modelWith("head(x)") +
      trainBlock(
        undefined,
        "quantize head with svdquant(rank: 0)\n  optimize ** with adamw(lr: 1e-2)",
      ),
    code: "E0402",
    message: "rank must be a positive integer, not 0",
    at: "svdquant(rank: 0)",
  },
  {
    name: "3: an i32 parameter in a matmul",
    // frozen, so that the optimizer rule (E0303 below) does not reject it first
    program:
      header +
      modelWith("x @ w", "param w: i32[2, 2] = zeros") +
      trainBlock(undefined, "freeze w\n  optimize ** with adamw(lr: 1e-2)"),
    code: "E0402",
    message: "`@` needs f32 tensors, found i32[2, 2]",
    at: "w\n}",
  },
  {
    name: "3: an i32 parameter given to an optimizer",
    program: header + modelWith("x * w", "param w: i32[2] = zeros") + trainBlock(),
    code: "E0303",
    message: "optimizer `adamw` applies to `f32[...]` tensors, but `w` is i32[2]",
    at: "** with",
  },
  {
    name: "4: a reshape to negative dims",
    program: header + modelWith("reshape(head(x), [-2, -1])") + trainBlock(),
    code: "E0402",
    message: "reshape dims must be positive integers (or one -1 for the rest), not -2",
    at: "[-2, -1]",
  },
  {
    name: "5: `where` with shapes that do not broadcast",
    program: header + modelWith("where(x > 0, head(x), ones(3, 5))") + trainBlock(),
    code: "E0401",
    message: "`where` of f32[B, 2], f32[B, 2] and f32[3, 5]: the shapes do not broadcast",
    at: "where(",
  },
  {
    name: "6: a fractional axis",
    program: header + modelWith("transpose(head(x), 0.5, 1)") + trainBlock(),
    code: "E0402",
    message: "`transpose`'s argument 2 must be an integer, not 0.5",
    at: "0.5",
  },
  {
    name: "6: a fractional index",
    program: header + modelWith("head(x) * x[0.5]") + trainBlock(),
    code: "E0402",
    message: "an index must be an integer, not 0.5",
    at: "0.5",
  },
  {
    name: "7: mse on i32 labels",
    program:
      header +
      `model M() {
  head = Linear(2, 1)
  forward(x: f32[B, 2]) -> f32[B] = reshape(head(x), [B])
}
` +
      trainBlock("mse(model(batch.x), batch.y)"),
    code: "E0402",
    message: "`mse` needs f32 values, found i32[8]",
    at: "batch.y)",
  },
  {
    name: "11: topk_mask on a matrix",
    program: header + modelWith("head(x) * topk_mask(ones(8, 2), 1)") + trainBlock(),
    code: "E0401",
    message: "`topk_mask` needs a vector of scores, found f32[8, 2]",
    at: "ones(8, 2)",
  },
  {
    name: "13: a misspelled model used as a submodule",
    program: header + modelWith("head(x)", "head = Linaer(2, 2)") + trainBlock(),
    code: "E0204",
    message: "`Linaer` is not defined",
    at: "Linaer",
  },
  {
    name: "13: an un-imported model used as a submodule",
    program: header + modelWith("head(x)", "head = Attention(2, 2)") + trainBlock(),
    code: "E0204",
    message: "add `import std.nn.{Attention}`",
    at: "Attention",
  },
  {
    name: "15: a model member defined twice",
    program:
      header + modelWith("head(x)", "head = Linear(2, 2)\n  head = Linear(2, 2)") + trainBlock(),
    code: "E0202",
    message: "`head` is defined twice",
    at: "head = Linear(2, 2)\n  forward",
  },
  {
    name: "16: a block repeated 1e30 times",
    program:
      header +
      `model M() {
  blocks[1e30] {
    l = Linear(2, 2)
  }
  forward(x: f32[B, 2]) -> f32[B, 2] = x
}
` +
      trainBlock(),
    code: "E0402",
    message: "a block cannot repeat 1e+30 times",
    at: "1e30",
  },
  {
    name: "16: a tensor of more than 2^31 elements",
    program: header + modelWith("head(x) + sum(zeros(65536, 65536))") + trainBlock(),
    code: "E0401",
    message: "more than 2^31 - 1 elements",
    at: "zeros(65536, 65536)",
  },
  {
    name: "16: a parameter of more than 2^31 elements",
    program:
      header +
      modelWith("head(x)", "head = Linear(2, 2)\n  big = Linear(65536, 65536)") +
      trainBlock(),
    code: "E0401",
    message: "more than one tensor can hold",
    at: "Linear(65536, 65536)",
  },
  {
    name: "16: a model of more than 2^31 parameter elements in all",
    program:
      header +
      `model M() {
  blocks[200] {
    l = Linear(4096, 4096)
  }
  forward(x: f32[B, 2]) -> f32[B, 2] = x
}
` +
      trainBlock(),
    code: "E0401",
    message: "this model has 3.36e+9 parameter elements, more than lrk can hold (2^31 - 1)",
    at: "M()\n",
  },
  {
    name: "8: heads not dividing d in the tiny transformer, at the user's `model` line",
    program: `import std.optim.{adamw}
import "./tiny_lm.lrk".{TinyLM}
data arith = std.data.arithmetic(ops: "+", digits: 2, seed: 7)
train t {
  model TinyLM(vocab: arith.vocab, d: 64, heads: 5)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with adamw(lr: 1e-2)
  steps 5
  batch 8
}
`,
    code: "E0205",
    message: "d (64) must be divisible by heads (5)",
    at: "TinyLM(vocab",
  },
  {
    name: "9: an adapter param initialized from another adapter param",
    program:
      header +
      modelWith("head(x)") +
      `adapter ad(rank: int) on Linear(in, out) {
  param A: f32[rank, in] = normal(std: 0.02)
  param B: f32[out, rank] = A @ zeros(in, rank)
  forward(x: f32[..., in]) -> f32[..., out] = base(x) + (x @ A^T) @ B^T
}
` +
      trainBlock(
        undefined,
        "freeze **\n  adapt head with ad(rank: 2)\n  optimize adapters with adamw(lr: 1e-2)",
      ),
    code: "E0206",
    message: "`B`'s initializer cannot read `A`, another param of this adapter",
    at: "A @ zeros",
  },
  {
    name: "14: `normal` in an optimizer's state gets help that fits",
    program:
      header +
      modelWith("head(x)") +
      `optimizer noisy(lr: float) on param: f32[...] {
  state n = normal(std: 0.01)
  update(g) {
    param -= lr * (g + n)
  }
}
` +
      trainBlock(undefined, "optimize ** with noisy(lr: 1e-2)"),
    code: "E0206",
    message:
      "an optimizer's or budget's `state` starts from a tensor expression such as `zeros_like(param)`",
    at: "normal(std: 0.01)",
  },
  {
    name: "17: a GaLore rank above min(rows, cols)",
    program:
      "import std.optim.{galore}\n" +
      header +
      modelWith("head(x)", "head = Linear(2, 2)\n  hidden = Linear(2, 2)") +
      trainBlock(
        undefined,
        "optimize hidden.weight with galore(rank: 128)\n  optimize ** with adamw(lr: 1e-2)",
      ),
    code: "W0302",
    message: "`galore`'s rank 128 is larger than min(rows, cols) = 2 of `hidden.weight` (2×2)",
    at: "galore(rank: 128)",
    status: 0,
  },
  {
    name: "17: a LoRA rank above min(in, out)",
    program:
      "import std.adapters.{lora}\n" +
      header +
      modelWith("head(x)") +
      trainBlock(
        undefined,
        "freeze **\n  adapt head with lora(rank: 4)\n  optimize adapters with adamw(lr: 1e-2)",
      ),
    code: "W0302",
    message: "`lora`'s rank 4 is larger than min(rows, cols) = 2 of `head`",
    at: "lora(rank: 4)",
    status: 0,
  },
  {
    name: "18: an SVDQuant rank over what the device's SVD holds (was an internal error on WebGPU)",
    program:
      "import std.quant.{svdquant}\nimport std.adapters.{lora}\n" +
      header +
      modelWith(
        "head(mid(up(x)))",
        "up = Linear(2, 300)\n  mid = Linear(300, 300)\n  head = Linear(300, 2)",
      ) +
      trainBlock(
        undefined,
        "freeze **\n  quantize mid with svdquant(rank: 260, group: 60)\n  adapt mid with lora(rank: 2)\n  optimize adapters with adamw(lr: 1e-2)",
      ),
    code: "E0401",
    message: "`svd_split` takes a rank of at most 252",
    at: "svdquant(rank: 260, group: 60)",
  },
  {
    name: "19: an initializer argument it does not take (was ignored: `sd` drew std 1)",
    program:
      header +
      modelWith("x @ w^T + head(x)", "head = Linear(2, 2)\n  param w: f32[2, 2] = normal(sd: 5)") +
      trainBlock(),
    code: "E0205",
    message: "`normal` has no parameter `sd`",
    at: "sd",
  },
  {
    name: "20: assigning an optimizer's `step` (was a silent rebinding of a name)",
    program:
      header +
      "optimizer weird(lr: float) on param: f32[...] {\n  update(g) {\n    step = 5\n    param -= lr * g * step\n  }\n}\n" +
      modelWith("head(x)") +
      trainBlock(undefined, "optimize ** with weird(lr: 0.1)"),
    code: "E0206",
    message: "`step` cannot be assigned here",
    at: "step = 5",
  },
  {
    name: "21: more steps than the device's f32 step counter counts exactly",
    program: header + modelWith("head(x)") + trainBlock().replace("steps 5", "steps 100000000"),
    code: "E0402",
    message: "`steps` is over 16,777,216",
    at: "100000000",
  },
];

/** Programs that were refused or crashed although they are well-typed: they must check and build. */
const accepted: { name: string; program: string }[] = [
  {
    name: "10: one_hot of integer arithmetic (`arange(n) % k`)",
    program: header + modelWith("head(x) + one_hot(arange(B) % 2, 2)") + trainBlock(),
  },
  {
    name: "12: a budget whose score is a bare parameter",
    program: `import std.adapters.{adalora}
import std.optim.{adamw}
import "./tiny_lm.lrk".{TinyLM}
data arith = std.data.arithmetic(ops: "+", digits: 2, seed: 7)
budget by_magnitude() on adalora {
  score = E
  keep(s) = units
  prune_at(s) = false
  prune(kept) {
    E = E * kept
  }
}
train t {
  model TinyLM(vocab: arith.vocab, d: 32, layers: 1)
  data arith
  loss cross_entropy(model(batch.input), batch.target)
  freeze **
  adapt blocks.*.attn.{q, k, v, o} with adalora(init_rank: 4)
  budget rank 8 over blocks.*.attn.* by by_magnitude()
  optimize adapters with adamw(lr: 1e-2)
  steps 5
  batch 8
}
`,
  },
];

describe("well-typed programs that used to fail", () => {
  for (const c of accepted) {
    it(c.name, async () => {
      const dir = mkdtempSync(join(tmpdir(), "lrk-ok-"));
      copyFileSync(join(root, "examples", "tiny_lm.lrk"), join(dir, "tiny_lm.lrk"));
      writeFileSync(join(dir, "p.lrk"), c.program);
      const check = await run(["check", "p.lrk"], dir);
      expect(check.status, check.output).toBe(0);
      expect(check.output).toContain("no problems");
      const build = await run(["build", "p.lrk", "--emit", "ir", "--device", "portable"], dir);
      expect(build.status, build.output).toBe(0);
    });
  }
});

describe("ill-typed programs get a diagnostic at the user's line", () => {
  for (const c of cases) {
    it(c.name, async () => {
      const dir = mkdtempSync(join(tmpdir(), "lrk-ill-"));
      copyFileSync(join(root, "examples", "tiny_lm.lrk"), join(dir, "tiny_lm.lrk"));
      writeFileSync(join(dir, "p.lrk"), c.program);
      const where = `p.lrk:${lineCol(c.program, c.at)}`;
      for (const args of [
        ["check", "p.lrk"],
        ["build", "p.lrk", "--emit", "ir", "--device", "portable"],
      ]) {
        const r = await run(args, dir);
        expect(r.output).not.toContain("bug in lrkc");
        expect(r.status, r.output).toBe(c.status ?? 1);
        const severity = (c.status ?? 1) === 0 ? "warning" : "error";
        expect(r.output).toContain(`${where}: ${severity}[${c.code}]`);
        expect(r.output).toContain(c.message);
      }
    });
  }
});
