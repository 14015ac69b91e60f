// Programs written from spec/language.md alone, by someone who never saw the tests: each case is
// a place where the compiler accepted what it should refuse (and would have trained wrong in
// silence), or refused what the spec allows.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { locationText } from "../language/diagnostics.js";
import { SourceFile } from "../language/source.js";
import { cannotWrite } from "../cli/files.js";
import { readSafetensors } from "../runtime/safetensors.js";
import { parseText, root } from "./helpers.js";
import { prepare } from "./program-helpers.js";

/** A two_moons program with `extra` train items and `top` declarations before it. */
function program(
  o: { top?: string; items?: string; lr?: string; members?: string; forward?: string } = {},
): string {
  return `import std.nn.{Linear}
import std.optim.{sgd}

data moons = std.data.two_moons(n: 64)
${o.top ?? ""}

model Net {
  l = Linear(2, 2)
${o.members ?? ""}
  forward(x: f32[B, 2]) -> f32[B, 2] = ${o.forward ?? "l(x)"}
}

train t {
  model Net
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with sgd(lr: ${o.lr ?? "0.1"})
  steps 3
${o.items ?? ""}
}
`;
}

function errorsOf(text: string) {
  return prepare(new SourceFile("test.lrk", text)).diagnostics.filter(
    (d) => d.severity === "error",
  );
}

describe("values computed while compiling are finite numbers", () => {
  it("the program itself compiles", () => {
    expect(errorsOf(program())).toEqual([]);
  });

  for (const [top, lr, message] of [
    ["const lr = 1 / 0", "lr", "this `/` gives Infinity (a division by zero)"],
    ["const lr = 5 % 0", "lr", "this `%` gives NaN (a remainder by zero)"],
    ["const lr = 2 ^ 1024", "lr", "this `^` gives Infinity (too large for a 64-bit float)"],
    ["", "sqrt(-1)", "`sqrt(-1)` is NaN, not a finite number"],
    ["", "log(0)", "`log(0)` is -Infinity, not a finite number"],
  ]) {
    it(`${top || lr} is E0402 where it is computed`, () => {
      const [d, ...rest] = errorsOf(program({ top, lr }));
      expect(rest).toEqual([]);
      expect(d?.code).toBe("E0402");
      expect(d?.message).toBe(message);
      const line = program({ top, lr })
        .split("\n")
        .findIndex((l) => l.includes(top || `lr: ${lr}`));
      expect(d?.at && locationText(d.at)).toMatch(new RegExp(`^test\\.lrk:${line + 1}:`));
    });
  }
});

describe("train-block settings that would never act, or act backwards", () => {
  for (const [item, message] of [
    ["eval every 0", "`eval every` must be a positive number of steps, not 0"],
    ["checkpoint every -2", "`checkpoint every` must be a positive number of steps, not -2"],
    ["schedule cosine(warmup: -3)", "`warmup` must be a number of steps, 0 or more, not -3"],
    [
      "schedule linear(min_ratio: 2)",
      "`min_ratio` must be from 0 to 1 (the final rate's fraction of `lr`), not 2",
    ],
  ]) {
    it(`\`${item}\` is E0402 at its value`, () => {
      const [d, ...rest] = errorsOf(program({ items: `  ${item}` }));
      expect(rest).toEqual([]);
      expect(d?.code).toBe("E0402");
      expect(d?.message).toBe(message);
    });
  }

  it("the edges the spec allows still compile", () => {
    const items =
      "  eval every 1\n  checkpoint every 1\n  schedule cosine(warmup: 0, min_ratio: 1)";
    expect(errorsOf(program({ items }))).toEqual([]);
  });
});

describe("what opening the data finds is said, not kept quiet", () => {
  it("a text file too short for a separate valid split says they overlap (train and eval)", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-stranger-"));
    writeFileSync(join(dir, "tiny.txt"), "abcde");
    writeFileSync(
      join(dir, "p.lrk"),
      `import std.nn.{Embedding}
import std.optim.{sgd}

data notes = std.data.text("tiny.txt", context: 4)

model Bigram(vocab: int) {
  e = Embedding(vocab, vocab)
  forward(ids: i32[B, T]) -> f32[B, T, vocab] = e(ids)
}

train t {
  model Bigram(vocab: notes.vocab)
  data notes
  loss cross_entropy(model(batch.input), batch.target)
  optimize ** with sgd(lr: 0.1)
  steps 1
  batch 1
}
`,
    );
    const note =
      'note: "tiny.txt" is short for context 4: its last 10% is under 5 bytes, so train is the whole file and valid its last 5 bytes (they overlap)';
    for (const args of [
      ["train", "p.lrk", "--device", "cpu", "--out", "run"],
      ["eval", "p.lrk", "--device", "cpu"],
    ]) {
      const r = spawnSync(process.execPath, [join(root, "bin", "lrkc.js"), ...args], {
        cwd: dir,
        encoding: "utf8",
      });
      expect(r.stderr).toContain(note);
      expect(r.status).toBe(0);
    }
  });
});

describe("a damaged safetensors header", () => {
  it("an entry without a dtype (a flipped bit in `__metadata__`) is a damaged file, not a dtype to convert", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-stranger-"));
    const header = Buffer.from(
      JSON.stringify({
        "__-etadata__": { format: "pt" },
        w: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
      }),
    );
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(header.length));
    const path = join(dir, "flipped.safetensors");
    writeFileSync(path, Buffer.concat([length, header, Buffer.alloc(4)]));
    expect(() => readSafetensors(path)).toThrow(
      /is not a valid safetensors file: tensor `__-etadata__`'s entry has no dtype/,
    );
  });
});

describe("declared types and names are checked, not ignored", () => {
  for (const [name, top, code, message] of [
    [
      "a constant's scalar type",
      "const width: int = 1.5",
      "E0402",
      "`width` must be an integer, but `1.5` was given",
    ],
    [
      "a constant's str type",
      "const tag: str = 3",
      "E0402",
      "`tag` must be a string, but `3` was given",
    ],
    [
      "a constant typed as a tensor",
      "const t: f32[2] = 1",
      "E0402",
      "a constant is known while compiling and is never a tensor: `t` cannot be of type f32[…]",
    ],
    [
      "a member's `let` type",
      { members: "  let k: int = 2.5" },
      "E0402",
      "`k` must be an integer, but `2.5` was given",
    ],
    [
      "a function's `let` type",
      { members: "  helper(x) {\n    let n: bool = 2\n    return x\n  }", forward: "helper(l(x))" },
      "E0402",
      "`n` must be a bool, but `2` was given",
    ],
    [
      "a parameter declared twice",
      "model Twice(a: int, a: int) {}",
      "E0202",
      "parameter `a` is declared twice",
    ],
    [
      "an escape past the last code point",
      'const s = "\\u{110000}"',
      "E0108",
      "`\\u{110000}` is not a Unicode code point: they go up to 10FFFF",
    ],
  ]) {
    it(`${name}: ${code}`, () => {
      const errors = errorsOf(program(typeof top === "string" ? { top } : top));
      expect(errors.map((d) => [d.code, d.message])).toContainEqual([code, message]);
    });
  }

  it("values of their declared types still compile (`float` takes an integer)", () => {
    const top =
      'const d: int = 128 / 2\nconst lr: float = 1\nconst on: bool = true\nconst tag: str = "x"';
    expect(errorsOf(program({ top, lr: "lr" }))).toEqual([]);
  });
});

describe("writing where a file is in the way", () => {
  it("says how to get out of the way, not only what happened", () => {
    const e = Object.assign(new Error("EEXIST"), { code: "EEXIST", syscall: "mkdir" });
    const d = cannotWrite("/tmp/x/peft", e);
    expect(d.message).toBe("cannot write `/tmp/x/peft`: a file of that name is in the way");
    expect(d.help).toBe(
      "a file stands where lrkc writes a folder: pass another path, or move the file away",
    );
  });
});

describe("indexing", () => {
  it("two `...` in one index say so (it read: a slice with more bounds than axes)", () => {
    const errors = errorsOf(program({ forward: "l(x)[..., ...]" }));
    expect(errors.map((d) => d.message)).toEqual([
      "`...` may appear once in an index: it stands for all the axes not otherwise named",
    ]);
  });
});

describe("the spec's examples call the standard library as it is", () => {
  it("every named argument of a std definition in a spec example is one of its parameters", () => {
    const std = new Map<string, string[]>();
    for (const f of readdirSync(join(root, "stdlib")).filter((f) => f.endsWith(".lrk"))) {
      const p = parseText(readFileSync(join(root, "stdlib", f), "utf8"), f);
      for (const item of p.program.items)
        if (item.kind === "Definition" || item.kind === "Function")
          // every optimizer with an `lr` also takes `schedule:` (spec §11)
          std.set(item.name.name, [...item.params.map((x) => x.name.name), "schedule"]);
    }
    const wrong: string[] = [];
    for (const doc of ["spec/language.md", "spec/diagnostics.md", "README.md"]) {
      const text = readFileSync(join(root, doc), "utf8");
      for (const block of text.matchAll(/```lrk\n([\s\S]*?)```/g)) {
        const p = parseText(block[1]!);
        // a block that declares a name of its own (§12.2's sketch of adalora_budget) uses that
        const own = new Set(p.program.items.flatMap((i) => ("name" in i ? [i.name.name] : [])));
        const walk = (n: unknown): void => {
          if (!n || typeof n !== "object") return;
          if (Array.isArray(n)) return n.forEach(walk);
          const node = n as {
            kind?: string;
            callee?: { kind: string; name: string };
            args?: { name?: { name: string } }[];
          };
          const callee =
            node.kind === "Call" && node.callee?.kind === "NameExpr" ? node.callee.name : undefined;
          if (callee && std.has(callee) && !own.has(callee))
            for (const a of node.args ?? [])
              if (a.name && !std.get(callee)!.includes(a.name.name))
                wrong.push(`${doc}: ${callee}(${a.name.name}: …)`);
          for (const [k, v] of Object.entries(n)) if (k !== "span") walk(v);
        };
        walk(p.program.items);
      }
    }
    expect(wrong).toEqual([]);
  });
});
