// Compile time against depth: LoRA on every linear of the tiny LM (examples/lora_finetune.lrk) at
// 32 layers must compile and plan (step and init, portable target, as `lrkc build --emit plan
// --device portable`) within a generous bound. It takes about 2.5 s on a 2-core machine; fusion
// that was super-linear in the graph took 170 s. This guards against that coming back; it is not
// a speed target (bench/fuse-depth.ts measures). CPU time, as the bench measures it.
//
// What made it super-linear, checked without a clock: fusion ran again after each split of a
// kernel over the binding limit, and a deep model's gradient-norm reduction needs a split per
// few layers. Every over-limit group is now split in one round, so the number of fusion passes
// must not grow with depth.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { portableTarget } from "../../cli/target.js";
import { compile, planStep, type Compiled } from "../../compiler/compile.js";
import { fuse } from "../../compiler/fuse/index.js";
import { matmulCodeStats } from "../../compiler/kernels/matmul.js";
import { planMemory, type MemoryStep, type TensorNeed } from "../../compiler/memory-plan.js";
import { packageRoot } from "../../compiler/modules.js";
import { stepEntry } from "../../compiler/program.js";
import type { ILexingResult } from "chevrotain";
import { Lexer } from "../../language/chevrotain.js";
import { SourceFile } from "../../language/source.js";
import { allTokens } from "../../language/tokens.js";

const layers = 32;
const boundSeconds = 120;

function loraLm(layers: number): SourceFile {
  const path = join(packageRoot(), "examples/lora_finetune.lrk");
  const text = readFileSync(path, "utf8");
  const deep = text.replace(
    "model TinyLM(vocab: sub.vocab)",
    `model TinyLM(vocab: sub.vocab, layers: ${layers})`,
  );
  expect(deep).not.toBe(text);
  return new SourceFile(path, deep);
}

const compiledLms = new Map<number, Compiled>();
/** The LoRA tiny LM at `layers`, compiled once for the tests that only read it. */
function compileLm(layers: number): Compiled {
  let known = compiledLms.get(layers);
  if (!known) compiledLms.set(layers, (known = compile(loraLm(layers)).compiled!));
  return known;
}

/** Fusion passes of the first step's entry at `layers`, with 8 storage buffers per kernel. */
function fusionPasses(layers: number): number {
  const step = compileLm(layers).program.step;
  const outputs = stepEntry(step, 1).outputs.map((o) => o.node);
  return fuse(step.graph, outputs, {
    maxBindings: portableTarget.limits.maxStorageBuffersPerShaderStage,
  }).passes;
}

/** CPU seconds of this process: other work on a shared machine does not count. */
const cpuSeconds = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
};

/**
 * A clock-free measure of the work `run` does, with what it returns: elements added to sets and
 * maps, and elements array searches, folds and sorts go through. Work that grows with the square
 * of the depth shows in it whichever machine runs the test, however loaded.
 */
function workOf<T>(run: () => T): { result: T; work: number } {
  const methods = ["find", "findIndex", "indexOf", "includes", "filter", "some", "every"].concat([
    "reduce",
    "sort",
    "splice",
  ]);
  const array = Array.prototype as unknown as Record<string, (...args: unknown[]) => unknown>;
  const originals = methods.map((m) => array[m]!);
  const { add } = Set.prototype;
  const { set } = Map.prototype;
  let work = 0;
  methods.forEach((m, i) => {
    array[m] = function (this: unknown[], ...args: unknown[]) {
      work += this.length;
      return originals[i]!.apply(this, args);
    };
  });
  Set.prototype.add = function (this: Set<unknown>, value: unknown) {
    work++;
    return add.call(this, value);
  };
  Map.prototype.set = function (this: Map<unknown, unknown>, key: unknown, value: unknown) {
    work++;
    return set.call(this, key, value);
  };
  try {
    return { result: run(), work };
  } finally {
    methods.forEach((m, i) => (array[m] = originals[i]!));
    Set.prototype.add = add;
    Map.prototype.set = set;
  }
}

describe("compile time against depth", () => {
  it(`a LoRA tiny LM of ${layers} layers compiles and plans within ${boundSeconds} s`, () => {
    const started = cpuSeconds();
    const { compiled, diagnostics } = compile(loraLm(layers));
    expect(diagnostics.filter((d) => d.severity === "error")).toEqual([]);
    const program = compiled!.program;
    const stepPlan = planStep(program.step, portableTarget);
    const initPlan = planStep(program.initProgram, portableTarget);
    const seconds = cpuSeconds() - started;
    // The depth is real: every layer has its adapters, and the step runs kernels for all of them.
    const adapted = program.params.filter((p) => p.origin === "adapter").map((p) => p.path);
    expect(adapted.some((p) => p.startsWith(`blocks.${layers - 1}.`))).toBe(true);
    expect(adapted.length).toBe(layers * 6 * 2);
    expect(stepPlan.kernels.length).toBeGreaterThan(layers * 20);
    expect(initPlan.kernels.length).toBeGreaterThan(0);
    expect(seconds).toBeLessThan(boundSeconds);
  }, 300_000);

  it("fusion runs as many passes at 32 layers as at 2 (splits over the binding limit are batched)", () => {
    const shallow = fusionPasses(2);
    const deep = fusionPasses(layers);
    // The deep step does need splitting (its gradient-norm reduction reads every gradient)…
    expect(deep).toBeGreaterThan(1);
    // …and a split round per few layers (what it was: 95 passes at 32 layers) is gone.
    expect(deep).toBeLessThanOrEqual(Math.max(shallow, 3));
  }, 120_000);

  // Counted, not timed (workOf): fusion's work must grow with the graph, not faster. Splitting the clip's gradient-norm reduction (its epilogue a chain
  // of additions as long as the model) grew sets of every gradient under each node, split round
  // after split round: 10× the work at 4× the depth.
  it("fusion's work grows linearly with depth (the gradient-norm split included)", () => {
    const work = (layers: number) => {
      const step = compileLm(layers).program.step;
      const outputs = stepEntry(step, 1).outputs.map((o) => o.node);
      const { work } = workOf(() => fuse(step.graph, outputs, { maxBindings: 8 }));
      return { work, nodes: step.graph.nodes.length };
    };
    const shallow = work(8);
    const deep = work(layers);
    const growth = deep.nodes / shallow.nodes;
    expect(growth).toBeGreaterThan(3.5);
    expect(deep.work / shallow.work).toBeLessThan(growth * 1.25);
  }, 120_000);

  // Counted, not timed (workOf): the front end (parse, resolve, the train block, the rules, the
  // step graph: forward, autodiff, optimizer updates) works in proportion to the model. Placing the
  // optimizers found each parameter's module by searching every module's parameters, and each
  // optimizer state was looked for in the list of all states: 6× the work at 4× the depth.
  it("the front end's work grows linearly with depth (placement and optimizer states included)", () => {
    const work = (layers: number) => {
      const { result, work } = workOf(() => compile(loraLm(layers)).compiled!);
      expect(result.placement.adapters.length).toBe(layers * 6);
      return work;
    };
    expect(work(layers) / work(8)).toBeLessThan(layers / 8);
  }, 120_000);

  // Counted, not timed: a deep model runs the same few products in every layer, and the matmul
  // template's code (hundreds of lines a kernel) is generated once per distinct product (most
  // groups do not even ask: their kernels come from a group alike, compiler/kernel-memo.ts).
  it("plans the matmuls of more layers without generating more matmul code", () => {
    planStep(compileLm(8).program.step, portableTarget);
    const before = matmulCodeStats();
    const plan = planStep(compileLm(layers).program.step, portableTarget);
    const after = matmulCodeStats();
    const matmuls = plan.kernels.filter((k) => k.kind === "matmul").length;
    expect(matmuls).toBeGreaterThan(layers * 20);
    expect(after.generated - before.generated).toBe(0);
    expect(after.reused - before.reused).toBeGreaterThan(0);
  }, 120_000);
});

describe("memory planning against depth", () => {
  const limits = { maxStorageBufferBindingSize: 2 ** 40, maxBufferSize: 2 ** 40 };
  const activation = (key: string, bytes: number): TensorNeed => ({
    key,
    bytes,
    role: "activation",
    name: key,
  });

  // What the pool did before it kept its free buffers in a tree: first fit over the free buffers
  // in id order, else the largest one (least id) grown. The plans must not change.
  function firstFitByScanning(tensors: TensorNeed[], steps: MemoryStep[]): Map<string, number> {
    const bytes: number[] = [];
    const assignment = new Map<string, number>();
    const last = new Map<string, number>();
    steps.forEach((s, i) => [...s.reads, ...s.writes].forEach((k) => last.set(k, i)));
    const byKey = new Map(tensors.map((t) => [t.key, t]));
    const free: number[] = [];
    steps.forEach((s, i) => {
      for (const k of s.writes) {
        if (assignment.has(k)) continue;
        const need = Math.max(4, Math.ceil(byKey.get(k)!.bytes / 4) * 4);
        let pick = free.findIndex((b) => bytes[b]! >= need);
        if (pick < 0 && free.length)
          pick = free.reduce((best, b, j) => (bytes[b]! > bytes[free[best]!]! ? j : best), 0);
        if (pick >= 0) {
          const id = free.splice(pick, 1)[0]!;
          bytes[id] = Math.max(bytes[id]!, need);
          assignment.set(k, id);
        } else {
          assignment.set(k, bytes.length);
          bytes.push(need);
        }
      }
      for (const k of new Set([...s.reads, ...s.writes]))
        if (last.get(k) === i) free.push(assignment.get(k)!);
      free.sort((a, b) => a - b);
    });
    return assignment;
  }

  it("assigns pooled buffers as first fit over the free buffers did", () => {
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let trial = 0; trial < 20; trial++) {
      const tensors: TensorNeed[] = [];
      const steps: MemoryStep[] = [];
      for (let i = 0; i < 300; i++) {
        const key = `t${i}`;
        tensors.push(activation(key, 1 + Math.floor(random() * 4000)));
        const reads = tensors
          .slice(0, i)
          .filter(() => random() < 0.02)
          .map((t) => t.key);
        steps.push({ reads, writes: [key] });
      }
      const plan = planMemory(tensors, steps, limits);
      expect(plan.assignment).toEqual(firstFitByScanning(tensors, steps));
    }
  });

  // A deep model's step keeps every layer's activations for the backward pass, which frees them
  // one layer after another while it allocates gradients: scanning (and sorting) the list of free
  // buffers at each of those was quadratic in depth. Counted, not timed (workOf): planning's work
  // must grow with the tensors, not with their square.
  it("plans the activations of a deep backward pass without scanning the free buffers each time", () => {
    const n = 4_000;
    const tensors: TensorNeed[] = [];
    const steps: MemoryStep[] = [];
    for (let i = 0; i < n; i++) {
      tensors.push(activation(`a${i}`, 4 * (i + 1)));
      steps.push({ reads: [], writes: [`a${i}`] });
    }
    steps.push({ reads: tensors.map((t) => t.key), writes: [] }); // frees them all
    for (let i = 0; i < n; i++) {
      // bigger than every free buffer: the largest one is grown
      tensors.push(activation(`g${i}`, 4 * (n + 1)));
      steps.push({ reads: [], writes: [`g${i}`] });
    }
    const { result: plan, work } = workOf(() => planMemory(tensors, steps, limits));
    expect(plan.buffers.length).toBe(n);
    expect(plan.assignment.get("g0")).toBe(n - 1);
    expect(work).toBeLessThan(8 * tensors.length);
  });
});

// Start-up and front-end work that does not grow with depth but is paid on every build.
describe("the lexer's first-character table", () => {
  const plain = (r: ILexingResult) => ({
    tokens: r.tokens.map((t) => `${t.tokenType.name}@${t.startOffset}:${t.image}`),
    groups: Object.entries(r.groups).map(([g, ts]) => [g, ts.map((t) => t.startOffset)]),
    errors: r.errors.map((e) => `${e.offset}+${e.length}`),
  });

  // The catch-all Unknown token (`[^\s]`) is a complement set Chevrotain cannot analyze; it
  // turned the table off, and the lexer tried every pattern at every character. Its start
  // characters are a hint now (language/tokens.ts).
  it("covers every token: Chevrotain builds it (it throws where it cannot)", () => {
    expect(
      () => new Lexer(allTokens, { positionTracking: "full", ensureOptimizations: true }),
    ).not.toThrow();
  });

  it("lexes every code unit, the standard library and the examples as the lexer without it does", () => {
    const fast = new Lexer(allTokens, { positionTracking: "full" });
    const safe = new Lexer(allTokens, { positionTracking: "full", safeMode: true });
    const root = packageRoot();
    const texts = ["stdlib", "examples"].flatMap((dir) =>
      (readdirSync(join(root, dir), { recursive: true }) as string[])
        .filter((f) => f.endsWith(".lrk"))
        .map((f) => readFileSync(join(root, dir, f), "utf8")),
    );
    expect(texts.length).toBeGreaterThan(20);
    const every = Array.from({ length: 0x10000 }, (_, c) => String.fromCharCode(c));
    texts.push(every.join(""), every.join(" "), every.join("a"));
    for (const text of texts)
      expect(plain(fast.tokenize(text))).toEqual(plain(safe.tokenize(text)));
  });
});

// `lrkc build` loads what building needs: each command's module (the trainer, data loaders,
// tokenizers, export) is imported when its command runs, not at every start of lrkc.
describe("lrkc's start-up", () => {
  it("cli/main.ts imports no command's module up front but build's", () => {
    const text = readFileSync(join(packageRoot(), "cli/main.ts"), "utf8");
    const upFront = [...text.matchAll(/^import (?!type )[^;]*?from "([^"]+)";/gms)].map(
      (m) => m[1],
    );
    expect(upFront.sort()).toEqual(["./build.js", "./jit.js", "./target.js", "commander"]);
    for (const command of ["check", "fmt", "train", "eval", "export", "generate", "devices"])
      expect(text).toContain(`await import("./${command}.js")`);
  });
});
