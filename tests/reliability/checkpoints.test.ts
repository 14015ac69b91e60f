// Checkpoints that cannot be trusted are refused, never trained on: every tensor a run loads
// (`init`, `--resume`, `eval --weights`) is checked against the program's shape and dtype by one
// loader, the file's header against its data, and only regular files of a sane size are read.
// F16, BF16 and F64 tensors are read exactly; a float64 run can write F64.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { compile } from "../../compiler/compile.js";
import type { Tensor, TrainProgram } from "../../compiler/program.js";
import { SourceFile } from "../../language/source.js";
import { checkpointUses, loadCheckpoint } from "../../runtime/checkpoint.js";
import { CheckpointError, readSafetensors, writeSafetensors } from "../../runtime/safetensors.js";
import { lrkcBin, moonsProgram, runSetup } from "../helpers.js";

const lrkc = lrkcBin;

function source(extra = ""): string {
  const lora = "import std.adapters.{lora}\n";
  return `${moonsProgram({ steps: 4, checkpointEvery: 2, extra, imports: lora })}
train ft {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  adapt l1 with lora(rank: 2)
  optimize adapters with adamw(lr: 1e-2)
  steps 4
  batch 16
}
`;
}

function compiled(train = "run"): TrainProgram {
  const dir = mkdtempSync(join(tmpdir(), "lrk-ckpt-"));
  const { compiled } = compile(new SourceFile(join(dir, "run.lrk"), source()), { train });
  if (!compiled) throw new Error("the test program does not compile");
  return compiled.program;
}

const run = compiled("run");
const ft = compiled("ft");

/** Every parameter by path, at its shape, valued 0.25 (a run's final.safetensors). */
function finalOf(program: TrainProgram): Map<string, Tensor> {
  return new Map(
    program.params.map((p) => [
      p.path,
      { shape: [...p.shape], data: new Float32Array(count(p.shape)).fill(0.25) },
    ]),
  );
}

/** Every parameter and state the step reads, by store name (a run's checkpoint). */
function checkpointOf(program: TrainProgram): Map<string, Tensor> {
  return new Map(
    program.step.inputs
      .filter((i) => i.role === "param" || i.role === "state")
      .map((i) => [i.name, { shape: [...i.shape], data: new Float32Array(count(i.shape)) }]),
  );
}

const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

function temporary(name: string): string {
  return join(mkdtempSync(join(tmpdir(), "lrk-ckpt-")), name);
}

function saved(tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): string {
  const path = temporary("w.safetensors");
  writeSafetensors(path, tensors, metadata);
  return path;
}

/** A safetensors file from a header object (written as is) and its data bytes. */
function raw(header: unknown, data: Buffer | Uint8Array = Buffer.alloc(0)): string {
  const path = temporary("raw.safetensors");
  const json = Buffer.from(JSON.stringify(header), "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([prefix, json, data]));
  return path;
}

/** The CheckpointError's message (and help) that loading `path` for `use` throws. */
function refusal(path: string, use: keyof typeof checkpointUses, program = run): string {
  try {
    loadCheckpoint(path, program, checkpointUses[use]);
  } catch (e) {
    if (!(e instanceof CheckpointError)) throw e;
    return `${e.message}\nhelp: ${e.help ?? ""}`;
  }
  throw new Error(`\`${path}\` was accepted for ${use}`);
}

describe("shapes and dtypes are checked against the program (issue 10, items 1, 2, 7)", () => {
  it("--resume refuses a transposed, flattened or smaller parameter, naming both shapes", () => {
    for (const [shape, shown] of [
      [[2, 16], "[2, 16]"],
      [[32], "[32]"],
      [[16, 1], "[16, 1]"],
    ] as const) {
      const tensors = checkpointOf(run);
      tensors.set("param:l1.weight", { shape: [...shape], data: new Float32Array(count(shape)) });
      expect(refusal(saved(tensors, { step: "2" }), "resume")).toContain(`\`l1.weight\` in \``);
      expect(refusal(saved(tensors, { step: "2" }), "resume")).toContain(
        `is ${shown}, but the model's is [16, 2]`,
      );
    }
  });

  it("--resume refuses a mis-shaped optimizer state", () => {
    const tensors = checkpointOf(run);
    const name = [...tensors.keys()].find((k) => k.startsWith("state:l1.weight"))!;
    tensors.set(name, { shape: [2, 16], data: new Float32Array(32) });
    expect(refusal(saved(tensors, { step: "2" }), "resume")).toContain(`\`${name}\` in`);
    expect(refusal(saved(tensors, { step: "2" }), "resume")).toContain(
      "is [2, 16], but the program's is [16, 2]",
    );
  });

  it("a negative dimension is refused", () => {
    const path = raw(
      { "l1.weight": { dtype: "F32", shape: [-16, -2], data_offsets: [0, 128] } },
      Buffer.alloc(128),
    );
    expect(refusal(path, "init")).toContain(
      "shape [-16,-2] is not a list of non-negative integers",
    );
  });

  it("dimensions written as strings are refused, not reported as [16, 2] vs [16, 2]", () => {
    const path = raw(
      { "l1.weight": { dtype: "F32", shape: ["16", "2"], data_offsets: [0, 128] } },
      Buffer.alloc(128),
    );
    const message = refusal(path, "init");
    expect(message).toContain('shape ["16","2"] is not a list of non-negative integers');
    expect(message).not.toContain("but the model's is");
  });

  it("an I32 tensor is not used as f32 weights: E0502 names the tensor and both dtypes", () => {
    const tensors = finalOf(run);
    tensors.set("l2.weight", { shape: [2, 16], data: new Int32Array(32) });
    const message = refusal(saved(tensors), "init");
    expect(message).toContain("`l2.weight` in");
    expect(message).toContain("holds I32 values, but the model's is f32");
    expect(refusal(saved(tensors), "weights")).toContain(
      "holds I32 values, but the model's is f32",
    );
  });

  it("init, --resume and --weights name the same problem the same way", () => {
    const bare = finalOf(run);
    bare.set("l1.weight", { shape: [2, 16], data: new Float32Array(32) });
    const path = saved(bare, { step: "2" });
    const messages = (["init", "resume", "weights"] as const).map(
      (use) => refusal(path, use).split("\n")[0],
    );
    expect(messages[0]).toContain("is [2, 16], but the model's is [16, 2]");
    expect(new Set(messages).size).toBe(1);
  });
});

describe("the header is checked against the data (issue 10, items 3, 4)", () => {
  const entry = (begin: number, end: number) => ({
    dtype: "F32",
    shape: [2],
    data_offsets: [begin, end],
  });

  it("refuses data_offsets that are shifted, outside the data, overlapping or mis-sized", () => {
    const cases: [unknown, number, string][] = [
      [{ a: entry(4, 12) }, 12, "bytes 0 to 4 of its data belong to no tensor"],
      [{ a: entry(0, 8) }, 12, "its data section is 12 bytes, but its tensors cover 8"],
      [{ a: entry(8, 16) }, 12, "lie outside its 12-byte data section"],
      [{ a: entry(0, 8), b: entry(4, 12) }, 12, "overlaps the tensor before it"],
      [
        { a: { dtype: "F32", shape: [3], data_offsets: [0, 8] } },
        8,
        "(12 bytes), but its data_offsets [0, 8] hold 8 bytes",
      ],
      [{ a: { dtype: "F32", shape: [2], data_offsets: [8, 0] } }, 8, "lie outside"],
    ];
    for (const [header, bytes, why] of cases) {
      const path = raw(header, Buffer.alloc(bytes));
      expect(() => readSafetensors(path), why).toThrow(why);
      expect(() => readSafetensors(path)).toThrow(CheckpointError);
    }
  });

  it("a header that is null, an array, or has a null entry is E0502, not a crash", () => {
    expect(() => readSafetensors(raw(null))).toThrow("its header is null, not a JSON object");
    expect(() => readSafetensors(raw([1, 2]))).toThrow("its header is an array");
    expect(() => readSafetensors(raw({ a: null }))).toThrow(
      "tensor `a`'s entry is null, not an object with dtype, shape and data_offsets",
    );
    expect(() => readSafetensors(raw({ __metadata__: null }))).toThrow("__metadata__ is null");
    expect(() => readSafetensors(raw({ a: { dtype: "F32", shape: [1] } }))).toThrow(
      "data_offsets undefined are not two non-negative integers",
    );
  });

  it("an unsupported dtype says which ones lrk reads, not that the file is corrupt", () => {
    const message = (() => {
      try {
        readSafetensors(
          raw({ a: { dtype: "I64", shape: [1], data_offsets: [0, 8] } }, Buffer.alloc(8)),
        );
      } catch (e) {
        return `${(e as CheckpointError).message} / ${(e as CheckpointError).help}`;
      }
      return "accepted";
    })();
    expect(message).toContain('has dtype "I64"; lrk reads F64, F32, F16, BF16 and I32');
    expect(message).not.toContain("corrupt");
  });

  it("a header length past the end of the file is refused", () => {
    const path = temporary("long.safetensors");
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(0xffff_ffff_ffffn);
    writeFileSync(path, Buffer.concat([prefix, Buffer.from("{}")]));
    expect(() => readSafetensors(path)).toThrow("runs past the end of the file");
  });
});

describe("F16, BF16 and F64 (issue 10, item 5)", () => {
  it("F16 and BF16 widen to f32 exactly, subnormals, infinities and signs included", () => {
    const f16 = Uint16Array.of(0x3c00, 0xc000, 0x3555, 0x0001, 0x7bff, 0xfc00, 0x8000);
    const bf16 = Uint16Array.of(0x3f80, 0xc040, 0x3eaa, 0x0001, 0x7f80);
    const path = raw(
      {
        h: { dtype: "F16", shape: [7], data_offsets: [0, 14] },
        b: { dtype: "BF16", shape: [5], data_offsets: [14, 24] },
      },
      Buffer.concat([Buffer.from(f16.buffer), Buffer.from(bf16.buffer)]),
    );
    const { tensors } = readSafetensors(path);
    expect(tensors.get("h")!.data).toBeInstanceOf(Float32Array);
    expect([...tensors.get("h")!.data]).toEqual([
      1,
      -2,
      0.333251953125,
      2 ** -24,
      65504,
      -Infinity,
      -0,
    ]);
    expect([...tensors.get("b")!.data]).toEqual([
      1,
      -3,
      new Float32Array(new Uint32Array([0x3eaa0000]).buffer)[0],
      new Float32Array(new Uint32Array([0x00010000]).buffer)[0],
      Infinity,
    ]);
  });

  it("F16 weights load as the model's f32 parameters", () => {
    const bytes = (n: number) => Buffer.from(new Uint16Array(n).fill(0x3800).buffer); // 0.5
    const header: Record<string, unknown> = {};
    const parts: Buffer[] = [];
    let at = 0;
    for (const p of run.params) {
      const n = count(p.shape);
      header[p.path] = { dtype: "F16", shape: p.shape, data_offsets: [at, at + 2 * n] };
      parts.push(bytes(n));
      at += 2 * n;
    }
    const loaded = loadCheckpoint(raw(header, Buffer.concat(parts)), run, checkpointUses.init);
    expect([...loaded.tensors.get("param:l1.weight")!.data]).toEqual(new Array(32).fill(0.5));
  });

  it("writes F64 when asked and reads it back exactly; F32 stays the default", () => {
    const tensors = new Map<string, Tensor>([
      ["x", { shape: [3], data: Float64Array.of(0.1, 1 / 3, -1e-300) }],
      ["n", { shape: [2], data: Int32Array.of(7, -7) }],
    ]);
    const path = temporary("f64.safetensors");
    writeSafetensors(path, tensors, {}, { floats: "F64" });
    const header = JSON.parse(
      readFileSync(path)
        .subarray(8, 8 + Number(readFileSync(path).readBigUInt64LE(0)))
        .toString(),
    );
    expect(header.x.dtype).toBe("F64");
    expect(header.n.dtype).toBe("I32");
    const back = readSafetensors(path).tensors;
    expect(back.get("x")!.data).toBeInstanceOf(Float64Array);
    expect([...back.get("x")!.data]).toEqual([0.1, 1 / 3, -1e-300]);
    expect([...back.get("n")!.data]).toEqual([7, -7]);
    writeSafetensors(path, tensors);
    expect([...readSafetensors(path).tensors.get("x")!.data]).toEqual([
      Math.fround(0.1),
      Math.fround(1 / 3),
      -0,
    ]);
  });
});

describe("one loader for init, --resume and --weights (issue 10, item 6)", () => {
  it("init reads a LoRA run's final.safetensors into a model without adapters", () => {
    const loraFinal = finalOf(ft);
    expect([...loraFinal.keys()]).toContain("l1.lora.A");
    const loaded = loadCheckpoint(saved(loraFinal), run, checkpointUses.init);
    expect([...loaded.tensors.keys()].sort()).toEqual([
      "param:l1.bias",
      "param:l1.weight",
      "param:l2.bias",
      "param:l2.weight",
    ]);
  });

  it("--weights notes a LoRA run's adapters it does not use instead of dropping them silently", () => {
    const loaded = loadCheckpoint(saved(finalOf(ft)), run, checkpointUses.weights);
    expect(loaded.unused.sort()).toEqual(["l1.lora.A", "l1.lora.B"]);
    expect(loaded.missing).toEqual([]);
  });

  it("init still refuses a tensor that is no parameter nor an adapter of one", () => {
    const tensors = finalOf(run);
    tensors.set("l3.weight", { shape: [2], data: new Float32Array(2) });
    expect(refusal(saved(tensors), "init")).toContain(
      "has tensors the model does not: `l3.weight`",
    );
  });

  it("--weights reads a run's checkpoint (param: and state: keys) as well as final.safetensors", () => {
    const checkpoint = checkpointOf(run);
    checkpoint.set("param:l2.bias", { shape: [2], data: Float32Array.of(3, 4) });
    const loaded = loadCheckpoint(saved(checkpoint, { step: "2" }), run, checkpointUses.weights);
    expect([...loaded.tensors.keys()].every((k) => k.startsWith("param:"))).toBe(true);
    expect([...loaded.tensors.get("param:l2.bias")!.data]).toEqual([3, 4]);
    expect(loaded.missing).toEqual([]);
    expect(
      refusal(saved(new Map([["other", { shape: [1], data: new Float32Array(1) }]])), "weights"),
    ).toContain("has none of this model's parameters");
  });

  it("a tensor named both by path and by store name is refused, not picked at random", () => {
    const tensors = finalOf(run);
    tensors.set("param:l1.bias", { shape: [16], data: new Float32Array(16) });
    expect(refusal(saved(tensors), "weights")).toContain(
      "holds `l1.bias` twice, as `l1.bias` and as `param:l1.bias`",
    );
  });

  it("--resume still requires every parameter and state", () => {
    const tensors = checkpointOf(run);
    const state = [...tensors.keys()].find((k) => k.startsWith("state:"))!;
    tensors.delete(state);
    expect(refusal(saved(tensors, { step: "2" }), "resume")).toContain(
      `has no tensor for \`${state}\``,
    );
  });
});

describe("only regular files of a sane size are read (issue 10, item 8)", () => {
  it("a file far larger than the program could need is refused before it is read", () => {
    const path = temporary("huge.safetensors");
    writeFileSync(path, "");
    truncateSync(path, 200 << 20); // sparse: no disk used
    expect(refusal(path, "init")).toContain(
      "more than this program's parameters and states could take",
    );
  });
});

describe("the CLI (issue 10, items 1, 6, 8)", () => {
  function lrk(args: string[], cwd: string) {
    const r = spawnSync(process.execPath, [lrkc, ...args], {
      cwd,
      encoding: "utf8",
      timeout: 30_000,
    });
    return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
  }

  const setup = (extra = "") => runSetup(source(extra), "lrk-ckpt-cli-");

  it("--resume with a transposed parameter is E0502 (exit 1), not a crash", () => {
    const s = setup();
    expect(
      lrk(["train", s.file, "--train", "run", "--out", s.out, "--device", "cpu"], s.dir).code,
    ).toBe(0);
    const path = join(s.out, "checkpoint.safetensors");
    const { tensors, metadata } = readSafetensors(path);
    const edited = new Map<string, Tensor>(tensors);
    const w = tensors.get("param:l1.weight")!;
    edited.set("param:l1.weight", { shape: [2, 16], data: w.data });
    writeSafetensors(path, edited, metadata);
    const r = lrk(
      ["train", s.file, "--train", "run", "--out", s.out, "--resume", "--device", "cpu"],
      s.dir,
    );
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain("error[E0502]: `l1.weight` in");
    expect(r.stderr).toContain("is [2, 16], but the model's is [16, 2]");
  });

  it("eval --weights takes a run's checkpoint.safetensors and gives the loss its final weights give", () => {
    const s = setup();
    expect(
      lrk(["train", s.file, "--train", "run", "--out", s.out, "--device", "cpu"], s.dir).code,
    ).toBe(0);
    const loss = (weights: string) => {
      const r = lrk(
        ["eval", s.file, "--train", "run", "--weights", weights, "--json", "--device", "cpu"],
        s.dir,
      );
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { result: { loss: number } }).result.loss;
    };
    expect(loss(join(s.out, "checkpoint.safetensors"))).toBe(
      loss(join(s.out, "final.safetensors")),
    );
  });

  it("eval --weights of a quantized fine-tune quantizes the loaded weights, not random ones", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-ckpt-cli-"));
    const file = join(dir, "q.lrk");
    writeFileSync(
      file,
      `import std.nn.{Linear}
import std.optim.{adamw}
import std.adapters.{lora}
import std.quant.{svdquant}

data moons = std.data.two_moons(n: 64)

model Net {
  up = Linear(2, 32)
  mid = Linear(32, 24)
  head = Linear(24, 2)
  forward(x: f32[B, 2]) -> f32[B, 2] = head(gelu(mid(gelu(up(x)))))
}

train pre {
  model Net()
  data moons
  loss cross_entropy(model(batch.x), batch.y)
  optimize ** with adamw(lr: 1e-2)
  steps 6
  batch 8
}

train q {
  model Net()
  data moons
  init "pre/final.safetensors"
  loss cross_entropy(model(batch.x), batch.y)
  freeze **
  quantize mid with svdquant(bits: 4, group: 8, rank: 4)
  adapt mid with lora(rank: 2)
  optimize adapters with adamw(lr: 1e-3)
  steps 6
  batch 8
  eval every 3
}
`,
    );
    const trainBlock = (block: string) =>
      lrk(["train", file, "--train", block, "--out", join(dir, block), "--device", "cpu"], dir);
    expect(trainBlock("pre").code).toBe(0);
    expect(trainBlock("q").code).toBe(0);
    const last = readFileSync(join(dir, "q", "metrics.jsonl"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { kind: string; loss: number })
      .filter((m) => m.kind === "eval")
      .pop()!;
    const weights = join(dir, "q", "final.safetensors");
    const r = lrk(
      ["eval", file, "--train", "q", "--weights", weights, "--json", "--device", "cpu"],
      dir,
    );
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as { result: { loss: number } }).result.loss).toBe(last.loss);
  });

  it('a FIFO or /dev/zero as --init, init "…" or --weights is refused at once', () => {
    const s = setup();
    const fifo = join(s.dir, "pipe.safetensors");
    expect(spawnSync("mkfifo", [fifo]).status).toBe(0);
    writeFileSync(s.file, source(`init "${fifo}"`));
    for (const [args, kind] of [
      [
        ["train", s.file, "--train", "run", "--out", s.out, "--device", "cpu"],
        "a FIFO (named pipe)",
      ],
      [
        [
          "train",
          s.file,
          "--train",
          "run",
          "--init",
          "/dev/zero",
          "--out",
          s.out,
          "--device",
          "cpu",
        ],
        "a character device",
      ],
      [
        ["eval", s.file, "--train", "run", "--weights", fifo, "--device", "cpu"],
        "a FIFO (named pipe)",
      ],
    ] as const) {
      const r = lrk([...args], s.dir);
      expect(r.signal, `${args.join(" ")} hung`).toBeNull();
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr).toContain("error[E0502]");
      expect(r.stderr).toContain(`is ${kind}, not a regular file`);
    }
  });
});
