// The runtime data sources: arithmetic, two_moons, text, and the seeded host PRNG.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dataSources } from "../compiler/data.js";
import type { DataSpec } from "../compiler/program.js";
import { SourceFile } from "../language/source.js";
import {
  arithmetic,
  arithmeticAccuracy,
  arithmeticSequenceLength,
  DataError,
  exactMatch,
  greedyAnswers,
  openDataSet,
  text,
  twoMoons,
  type ArithmeticSource,
  type Batch,
  type LogitsFn,
} from "../runtime/data.js";
import { Rng, mixSeed } from "../runtime/rng.js";

type Arg = number | string | boolean | { name: string };

/** A data declaration as the compiler hands it to the runtime; omitted arguments take their defaults. */
function dataset(source: string, args: Record<string, Arg>, file = "/nowhere/main.lrk"): DataSpec {
  const plain: DataSpec["args"] = {};
  for (const p of dataSources[source]?.params ?? []) {
    const d = p.default;
    if (d?.kind === "number" || d?.kind === "string" || d?.kind === "bool") plain[p.name] = d.value;
    else if (d?.kind === "builtin") plain[p.name] = d.name;
  }
  for (const [k, v] of Object.entries(args)) plain[k] = typeof v === "object" ? v.name : v;
  return {
    source,
    args: plain,
    vocab: 0,
    split: "train",
    fields: {},
    help: "",
    at: { file: new SourceFile(file, ""), span: { start: 0, end: 0 } },
  };
}

function openArith(args: Record<string, Arg>): ArithmeticSource {
  const s = openDataSet(dataset("arithmetic", args));
  if (s.kind !== "arithmetic") throw new Error("expected arithmetic");
  return s;
}

function rows(b: Batch, field: string): number[][] {
  const f = b.fields[field]!;
  const width = f.shape.slice(1).reduce((a, c) => a * c, 1);
  return Array.from({ length: f.shape[0]! }, (_, r) =>
    Array.from(f.data.subarray(r * width, (r + 1) * width)),
  );
}

function expectDataError(f: () => unknown, message: RegExp): DataError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DataError);
    expect((e as DataError).message).toMatch(message);
    return e as DataError;
  }
  throw new Error(`expected a DataError matching ${message}`);
}

const EXAMPLE = /^(\d+)([+\-*])(\d+)=(-?\d+)\.$/;

function check(textOf: string): void {
  const m = EXAMPLE.exec(textOf);
  expect(m, textOf).not.toBeNull();
  const [, a, op, b, c] = m!;
  const x = Number(a);
  const y = Number(b);
  expect(Number(c), textOf).toBe(op === "+" ? x + y : op === "-" ? x - y : x * y);
  expect(String(Number(c))).toBe(c); // no leading zeros, `-` only when negative
}

describe("Rng", () => {
  it("is reproducible and restores its full state", () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const xs = Array.from({ length: 10 }, () => a.nextU32());
    expect(Array.from({ length: 10 }, () => b.nextU32())).toEqual(xs);
    expect(new Rng(43).nextU32()).not.toBe(xs[0]);

    a.normal(); // leaves a spare behind
    const saved = JSON.parse(JSON.stringify(a.getState())) as number[];
    const next = [a.normal(), a.normal(), a.float(), a.int(1000)];
    const c = new Rng(0);
    c.setState(saved);
    expect([c.normal(), c.normal(), c.float(), c.int(1000)]).toEqual(next);
    expect(() => c.setState([1, 2])).toThrow(RangeError);
  });

  it("draws in range with plausible moments", () => {
    const r = new Rng(1);
    let sum = 0;
    let sq = 0;
    let bad = 0;
    const n = 20000;
    for (let i = 0; i < n; i++) {
      const k = r.int(7);
      const f = r.float();
      if (!(k >= 0 && k < 7 && Number.isInteger(k) && f >= 0 && f < 1)) bad++;
      const z = r.normal();
      sum += z;
      sq += z * z;
    }
    expect(bad).toBe(0);
    expect(Math.abs(sum / n)).toBeLessThan(0.05);
    expect(Math.abs(sq / n - 1)).toBeLessThan(0.05);
    expect(mixSeed(1, 2)).not.toBe(mixSeed(2, 1));
    expect(mixSeed(-1)).not.toBe(mixSeed(2 ** 32 - 1));
  });
});

describe("arithmetic", () => {
  it("sizes sequences for the longest example", () => {
    expect(arithmeticSequenceLength("+", 3)).toBe("999+999=1998.".length);
    expect(arithmeticSequenceLength("-", 3)).toBe("000-999=-999.".length);
    expect(arithmeticSequenceLength("+-", 3)).toBe(13);
    expect(arithmeticSequenceLength("*", 2)).toBe("99*99=9801.".length);
    expect(arithmeticSequenceLength("+*", 1)).toBe("9*9=81.".length);
    expect(arithmeticSequenceLength("*", 6)).toBe("999999*999999=999998000001.".length);
    const s = openArith({ ops: "+-", digits: 3, seed: 7 });
    expect(s.sequenceLength).toBe(13);
    expect(s.fieldShapes(64)).toEqual({
      input: { shape: [64, 12], dtype: "i32" },
      target: { shape: [64, 12], dtype: "i32" },
    });
    expect(s.vocab).toBe(16);
  });

  it("writes correct equations, disjoint between train and valid", () => {
    const s = openArith({ ops: "+-*", digits: 3, seed: 7, train_size: 5000, valid_size: 500 });
    expect([s.trainSize, s.validSize, s.note]).toEqual([5000, 500, undefined]);
    const problem = (t: string) => t.slice(0, t.indexOf("="));
    const valid = new Set<string>();
    for (let i = 0; i < s.validSize; i++) {
      const t = s.example("valid", i);
      check(t);
      valid.add(problem(t));
    }
    expect(valid.size).toBe(500);
    const train = new Set<string>();
    const ops = new Set<string>();
    let negative = 0;
    for (let i = 0; i < s.trainSize; i++) {
      const t = s.example("train", i);
      check(t);
      expect(valid.has(problem(t))).toBe(false);
      train.add(problem(t));
      ops.add(EXAMPLE.exec(t)![2]!);
      if (t.includes("=-")) negative++;
    }
    expect(train.size).toBe(5000);
    expect([...ops].sort()).toEqual(["*", "+", "-"]);
    expect(negative).toBeGreaterThan(0);
    expect(s.example("train", 0).length).toBeLessThanOrEqual(s.sequenceLength);
  });

  it("without negative results keeps only a ≥ b for `-`, and says how many problems exist", () => {
    const s = openArith({ ops: "-", digits: 2, seed: 8, negative: false });
    // 0 ≤ b ≤ a ≤ 99: 100·101/2 problems, half of them held out at most
    expect(s.validSize + s.trainSize).toBe(5050);
    expect(s.note).toMatch(/only 5050 distinct problems/);
    const seen = new Set<string>();
    for (const split of ["valid", "train"] as const) {
      for (let i = 0; i < (split === "valid" ? s.validSize : s.trainSize); i++) {
        const t = s.example(split, i);
        check(t);
        const [, a, , b] = EXAMPLE.exec(t)!;
        expect(Number(a)).toBeGreaterThanOrEqual(Number(b));
        seen.add(t);
      }
    }
    expect(seen.size).toBe(5050);
    // sparse draws (3 digits) follow the same rule; `+` is unaffected
    const mixed = openArith({ ops: "+-", digits: 3, seed: 1, negative: false, train_size: 3000 });
    let plus = 0;
    for (let i = 0; i < mixed.trainSize; i++) {
      const [, a, op, b] = EXAMPLE.exec(mixed.example("train", i))!;
      if (op === "-") expect(Number(a)).toBeGreaterThanOrEqual(Number(b));
      else plus++;
    }
    expect(plus).toBeGreaterThan(1000);
  });

  it("masks targets to the answer digits and the final `.`", () => {
    const s = openArith({ ops: "-*", digits: 2, seed: 3, train_size: 300, valid_size: 50 });
    const L = s.sequenceLength;
    const b = s.batch("valid", 0, 50);
    expect(b.examples).toBe(50);
    const inputs = rows(b, "input");
    const targets = rows(b, "target");
    for (let r = 0; r < 50; r++) {
      const full = s.encode(s.example("valid", r).padEnd(L, " "));
      expect(inputs[r]).toEqual(full.slice(0, L - 1));
      const t = s.example("valid", r);
      const eq = t.indexOf("=");
      const dot = t.indexOf(".");
      for (let i = 0; i < L - 1; i++) {
        if (i + 1 <= eq || i + 1 > dot) expect(targets[r]![i]).toBe(-1);
        else expect(targets[r]![i]).toBe(full[i + 1]);
      }
      // the kept targets spell the answer and its `.`
      expect(s.decode(targets[r]!.filter((x) => x >= 0))).toBe(t.slice(eq + 1));
    }
    // a concrete row
    const one = arithmetic({ ops: "+", digits: 3, seed: 0, trainSize: 1, validSize: 1 });
    const t = one.example("valid", 0);
    const row = rows(one.batch("valid", 0, 1), "target")[0]!;
    expect(one.decode(row.map((x) => (x < 0 ? 15 : x))).trimEnd()).toBe(
      " ".repeat(t.indexOf("=")) + t.slice(t.indexOf("=") + 1),
    );
  });

  it("is deterministic in its seed", () => {
    const a = openArith({ ops: "+-", digits: 3, seed: 7, train_size: 2000, valid_size: 100 });
    const b = openArith({ ops: "+-", digits: 3, seed: 7, train_size: 2000, valid_size: 100 });
    const c = openArith({ ops: "+-", digits: 3, seed: 8, train_size: 2000, valid_size: 100 });
    for (const k of [0, 5, 123]) {
      expect(a.batch("train", k, 32)).toEqual(b.batch("train", k, 32));
      expect(a.batch("train", k, 32)).not.toEqual(c.batch("train", k, 32));
    }
    expect(a.batch("valid", 1, 32)).toEqual(b.batch("valid", 1, 32));
    expect(a.batch("valid", 1, 32)).not.toEqual(c.batch("valid", 1, 32));
  });

  it("shuffles train once per epoch, reproducibly and resumably", () => {
    const s = openArith({ ops: "+", digits: 2, seed: 5, train_size: 100, valid_size: 10 });
    const all = Array.from({ length: 100 }, (_, i) =>
      s.example("train", i).padEnd(s.sequenceLength).slice(0, -1),
    );
    const key = (row: number[]) => s.decode(row);
    for (const B of [10, 7]) {
      const seen: string[][] = [[], []];
      for (let k = 0; k * B < 200; k++) {
        const b = s.batch("train", k, B);
        expect(b.examples).toBe(B);
        rows(b, "input").forEach((row, r) => {
          const p = k * B + r;
          if (p < 200) seen[Math.floor(p / 100)]!.push(key(row));
        });
      }
      for (const epoch of seen) expect([...epoch].sort()).toEqual([...all].sort());
      expect(seen[0]).not.toEqual(seen[1]); // each epoch has its own order
      expect(seen[0]).not.toEqual(all);
    }
    expect(s.trainPosition(15, 7)).toEqual({ epoch: 1, offset: 5 });
    // a fresh source resumes mid-stream with the same batch
    const again = openArith({ ops: "+", digits: 2, seed: 5, train_size: 100, valid_size: 10 });
    expect(again.batch("train", 14, 7)).toEqual(s.batch("train", 14, 7));
  });

  it("returns a short last valid batch and no fake examples", () => {
    const s = openArith({ ops: "+", digits: 3, seed: 1, train_size: 50, valid_size: 10 });
    expect(s.batchCount("valid", 4)).toBe(3);
    const last = s.batch("valid", 2, 4);
    expect(last.examples).toBe(2);
    expect(last.fields.input!.shape).toEqual([2, 12]);
    expect(last.fields.target!.data.length).toBe(24);
    expect(() => s.batch("valid", 3, 4)).toThrow(RangeError);
  });

  it("shrinks train when the problem space is too small, and says so", () => {
    const s = openArith({ ops: "+", digits: 1, seed: 2 }); // 100 problems, 21000 asked for
    expect(s.validSize + s.trainSize).toBe(100);
    expect(s.validSize).toBe(50);
    expect(s.note).toMatch(/only 100 distinct problems/);
    const all = new Set<string>();
    for (const split of ["train", "valid"] as const)
      for (let i = 0; i < (split === "train" ? s.trainSize : s.validSize); i++) {
        check(s.example(split, i));
        all.add(s.example(split, i));
      }
    expect(all.size).toBe(100);
    const t = openArith({ ops: "*", digits: 2, seed: 8 }); // 10000 problems
    expect([t.validSize, t.trainSize]).toEqual([1000, 9000]);
  });

  it("gives prompts and answers for exact-match accuracy", async () => {
    const s = openArith({ ops: "+-*", digits: 2, seed: 4, train_size: 200, valid_size: 70 });
    const { prompts, answers } = s.answers("valid", 0, 8);
    expect(prompts).toHaveLength(8);
    for (let r = 0; r < 8; r++) {
      expect(s.decode(prompts[r]!) + answers[r] + ".").toBe(s.example("valid", r));
      expect(prompts[r]!.at(-1)).toBe(13);
    }
    // an oracle LM: at every position, put all weight on the correct next token
    const V = s.vocab;
    const oracle: LogitsFn = (input, batch, length) => {
      const out = new Float32Array(batch * length * V);
      for (let r = 0; r < batch; r++) {
        const row = s.decode(input.subarray(r * length, (r + 1) * length));
        const m = /^(\d+)([+\-*])(\d+)=/.exec(row)!;
        const [x, y] = [Number(m[1]), Number(m[3])];
        const full = `${m[0]}${m[2] === "+" ? x + y : m[2] === "-" ? x - y : x * y}.`;
        for (let t = 0; t + 1 < Math.min(full.length, length + 1); t++)
          out[(r * length + t) * V + s.encode(full[t + 1]!)[0]!] = 1;
      }
      return out;
    };
    expect(await greedyAnswers(s, prompts, oracle)).toEqual(answers);
    expect(await arithmeticAccuracy(s, oracle, { batchSize: 16 })).toEqual({
      correct: 70,
      total: 70,
      accuracy: 1,
    });
    // a model that always ends at once answers "" and one that never ends answers null
    const stop: LogitsFn = (_, b, l) =>
      new Float32Array(b * l * V).map((_, i) => (i % V === 14 ? 1 : 0));
    const never: LogitsFn = (_, b, l) =>
      new Float32Array(b * l * V).map((_, i) => (i % V === 7 ? 1 : 0));
    expect(await greedyAnswers(s, prompts.slice(0, 2), stop)).toEqual(["", ""]);
    expect(await greedyAnswers(s, prompts.slice(0, 2), never)).toEqual([null, null]);
    expect((await arithmeticAccuracy(s, stop, { limit: 10 })).total).toBe(10);
    // a model whose vocabulary is larger than the alphabet's (a pretrained LM on arithmetic):
    // the oracle's answers read the same, and a token outside the alphabet makes the answer wrong
    const wide = 64;
    const widened: LogitsFn = async (input, b, l) => {
      const narrow = await oracle(input, b, l);
      const out = new Float32Array(b * l * wide);
      for (let i = 0; i < b * l; i++)
        for (let v = 0; v < V; v++) out[i * wide + v] = narrow[i * V + v]!;
      return out;
    };
    expect(await greedyAnswers(s, prompts, widened)).toEqual(answers);
    const outside: LogitsFn = (_, b, l) =>
      new Float32Array(b * l * wide).map((_, i) => (i % wide === 40 ? 1 : 0));
    expect(await greedyAnswers(s, prompts.slice(0, 2), outside)).toEqual([null, null]);
    expect(exactMatch(["12", null, "3"], ["12", "4", "4"])).toEqual({
      correct: 1,
      total: 3,
      accuracy: 1 / 3,
    });
  });

  it("reports bad settings as DataErrors", () => {
    expectDataError(() => openArith({ ops: "+/" }), /`ops` has "\/"/);
    expectDataError(() => openArith({ ops: "" }), /`ops` is empty/);
    const e = expectDataError(() => openArith({ digits: 7 }), /`digits` must be .* 1 to 6, not 7/);
    expect(e.help).toMatch(/std\.data\.arithmetic/);
    expectDataError(() => openArith({ digits: 0 }), /`digits`.*not 0/);
    expectDataError(() => openArith({ digits: 2.5 }), /`digits` must be a whole number/);
    expectDataError(() => openArith({ train_size: 0 }), /`train_size` must be .*not 0/);
    expectDataError(() => openArith({ valid_size: -5 }), /`valid_size` must be .*not -5/);
    expectDataError(() => openArith({ digits: "3" }), /needs a number for `digits`/);
    expectDataError(() => openDataSet(dataset("mnist", {})), /no data source `mnist`/);
  });
});

describe("two_moons", () => {
  it("makes two balanced, labelled half-moons", () => {
    const s = openDataSet(dataset("two_moons", { n: 1000, seed: 1 }));
    expect([s.kind, s.vocab, s.trainSize, s.validSize]).toEqual(["two_moons", 2, 1000, 200]);
    expect(s.fieldShapes(64)).toEqual({
      x: { shape: [64, 2], dtype: "f32" },
      y: { shape: [64], dtype: "i32" },
    });
    const b = s.batch("train", 0, 1000);
    expect(b.fields.x!.shape).toEqual([1000, 2]);
    expect(b.fields.x!.data).toBeInstanceOf(Float32Array);
    expect(b.fields.y!.data).toBeInstanceOf(Int32Array);
    const ys = Array.from(b.fields.y!.data);
    expect(ys.every((y) => y === 0 || y === 1)).toBe(true);
    expect(ys.filter((y) => y === 1).length).toBe(500);
    const v = s.batch("valid", 3, 64);
    expect([v.examples, v.fields.y!.shape[0]]).toEqual([8, 8]);
  });

  it("puts noiseless points on their circles, and is seeded", () => {
    const s = twoMoons({ n: 101, noise: 0, seed: 3 });
    const b = s.batch("train", 0, 101);
    const x = b.fields.x!.data;
    const y = b.fields.y!.data;
    let ones = 0;
    for (let i = 0; i < 101; i++) {
      const [px, py] = [x[2 * i]!, x[2 * i + 1]!];
      if (y[i] === 0) {
        expect(Math.hypot(px, py)).toBeCloseTo(1, 5);
        expect(py).toBeGreaterThanOrEqual(0);
      } else {
        ones++;
        expect(Math.hypot(1 - px, 0.5 - py)).toBeCloseTo(1, 5);
        expect(py).toBeLessThanOrEqual(0.5);
      }
    }
    expect(ones).toBe(51);
    const noisy = (seed: number) => twoMoons({ n: 200, noise: 0.1, seed });
    expect(noisy(1).batch("train", 2, 16)).toEqual(noisy(1).batch("train", 2, 16));
    expect(noisy(1).batch("train", 2, 16)).not.toEqual(noisy(2).batch("train", 2, 16));
    expect(noisy(1).batch("valid", 0, 16)).not.toEqual(noisy(1).batch("train", 0, 16));
    expectDataError(() => twoMoons({ n: 0, noise: 0.1, seed: 0 }), /`n` must be/);
    expectDataError(() => twoMoons({ n: 10, noise: -1, seed: 0 }), /`noise` must be/);
  });
});

describe("text", () => {
  let dir: string;
  const corpus = Buffer.from(
    Array.from({ length: 40 }, (_, i) => `line ${i}: the quick brown fox ${i * 7}\n`).join(""),
  );
  const file = (name: string) => join(dir, name);
  const open = (args: Record<string, Arg>, opts = {}) =>
    openDataSet(dataset("text", args, join(dir, "main.lrk")), opts);

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "lrk-data-"));
    writeFileSync(file("corpus.txt"), corpus);
    writeFileSync(file("empty.txt"), "");
    writeFileSync(file("short.txt"), "abcdefghijklmnopqrst"); // 20 bytes
    mkdirSync(file("folder"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("cuts windows that are real pieces of the file", () => {
    const s = open({ path: "corpus.txt", context: 16 });
    if (s.kind !== "text") throw new Error("expected text");
    const n = corpus.length;
    expect([s.vocab, s.trainEnd, s.validStart]).toEqual([
      256,
      Math.floor(0.9 * n),
      Math.floor(0.9 * n),
    ]);
    expect(s.note).toBeUndefined();
    const train = corpus.subarray(0, s.trainEnd);
    const b = s.batch("train", 3, 8);
    expect(b.fields.input!.shape).toEqual([8, 16]);
    const inputs = rows(b, "input");
    const targets = rows(b, "target");
    for (let r = 0; r < 8; r++) {
      const window = Buffer.from([...inputs[r]!, targets[r]!.at(-1)!]);
      expect(train.includes(window)).toBe(true);
      expect(targets[r]!.slice(0, -1)).toEqual(inputs[r]!.slice(1));
    }
    expect(s.batch("train", 3, 8)).toEqual(
      open({ path: "corpus.txt", context: 16 }).batch("train", 3, 8),
    );
    expect(s.batch("train", 3, 8)).not.toEqual(s.batch("train", 4, 8));
    expect(s.batch("train", 3, 8)).not.toEqual(
      open({ path: "corpus.txt", context: 16 }, { seed: 1 }).batch("train", 3, 8),
    );
    // valid: consecutive windows from validStart, stride context, last one may be short
    const validBytes: number[] = [];
    const count = s.batchCount("valid", 4);
    for (let k = 0; k < count; k++) {
      const v = s.batch("valid", k, 4);
      rows(v, "input").forEach((row, r) => {
        expect(row).toEqual(
          Array.from(corpus.subarray(s.validStart + (k * 4 + r) * 16).subarray(0, 16)),
        );
        validBytes.push(...rows(v, "target")[r]!);
      });
    }
    expect(validBytes.length).toBe(s.validSize * 16);
    expect(
      Buffer.from(validBytes).equals(
        corpus.subarray(s.validStart + 1, s.validStart + 1 + validBytes.length),
      ),
    ).toBe(true);
  });

  it("uses the whole file for train when the last 10% is too short", () => {
    const s = open({ path: "short.txt", context: 5, tokenizer: { name: "bytes" } });
    if (s.kind !== "text") throw new Error("expected text");
    expect([s.trainEnd, s.validStart, s.validSize]).toEqual([20, 14, 1]);
    expect(s.note).toMatch(/overlap/);
    expect(rows(s.batch("valid", 0, 4), "input")).toEqual([Array.from(Buffer.from("opqrs"))]);
    // paths are relative to baseDir when one is given
    expect(
      openDataSet(dataset("text", { path: "short.txt", context: 19 }), { baseDir: dir }).trainSize,
    ).toBe(1);
  });

  it("reports unusable files as DataErrors", () => {
    const missing = expectDataError(
      () => open({ path: "nope.txt", context: 8 }),
      /cannot find the file "nope.txt"/,
    );
    expect(missing.help).toMatch(/relative/);
    expectDataError(() => open({ path: "empty.txt", context: 8 }), /"empty.txt" is empty/);
    expectDataError(() => open({ path: "folder", context: 8 }), /"folder" is a directory/);
    const long = expectDataError(
      () => open({ path: "short.txt", context: 20 }),
      /has 20 bytes, fewer than context \+ 1 = 21/,
    );
    expect(long.help).toMatch(/at most 19/);
    expectDataError(() => open({ path: "corpus.txt", context: 0 }), /`context` must be .*not 0/);
    expectDataError(
      // A name other than `bytes` is refused while compiling; here it is a folder without one.
      () => open({ path: "corpus.txt", context: 8, tokenizer: { name: "bpe" } }),
      /cannot find tokenizer.json in "bpe"/,
    );
  });
});
