// Fuzzing the whole compiler with a fixed seed: mutants of the examples and of the standard
// library (tokens deleted, duplicated, swapped and replaced, numbers replaced by 0, -1, 1e30,
// 2.5, huge integers…) go through `compile` and then `planStep` of the step and init programs for
// the portable target, as `lrkc build --emit plan --device portable` runs them. Every mutant must
// end in diagnostics or in a plan: an exception that is not one of the runtime's limit errors
// (cli/failures.ts) is an internal error, a mutant that runs past the time bound is a hang, and a
// diagnostic whose span lies outside its file is a bad span. Each is a finding. A mutant whose
// model has more than 4 times the parameter tensors of the largest example (`layers: 2` become
// `layers: 128`) is a valid program too big for the time bound: it is analyzed (instantiated and
// placed) but not compiled, and counted as large.
//
//   npm run build && node dist/bench/fuzz-compiler.js [MUTANTS] [--seed N] [--timeout SECONDS] [--json]
//
// Run it from anywhere: the sources come from this package. A mutated standard library module is
// written into a temporary copy of stdlib/ that the compile reads its `std.x` imports from, and
// a mutated library example (tiny_lm.lrk) into a temporary copy of examples/; the entry compiled
// is then an example that imports the mutated file. Mutants run in a worker thread, so a hang is
// cut off (the worker is terminated and a fresh one started) and an out-of-memory is a finding.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, cpSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { analyze, compile, planStep } from "../compiler/compile.js";
import { allParams } from "../compiler/instantiate.js";
import { packageRoot } from "../compiler/modules.js";
import { failureDiagnostic } from "../cli/failures.js";
import { portableTarget } from "../cli/target.js";
import { renderDiagnostics, type Diagnostic } from "../language/diagnostics.js";
import { tokenMatcher } from "chevrotain";
import { lex } from "../language/lexer.js";
import { Identifier } from "../language/tokens.js";
import { SourceFile } from "../language/source.js";
import { mulberry32 as rng } from "../runtime/rng.js";

const pick = <T>(items: readonly T[], random: () => number): T =>
  items[Math.floor(random() * items.length)]!;

interface Token {
  start: number;
  end: number;
  image: string;
  /** A name that is not a hard keyword (replacing it keeps the program parseable). */
  name: boolean;
}

function tokensOf(text: string): Token[] {
  const { tokens } = lex(new SourceFile("fuzz.lrk", text));
  return tokens.map((t) => ({
    start: t.startOffset,
    end: t.endOffset! + 1,
    image: t.image,
    name: tokenMatcher(t, Identifier),
  }));
}

/** Numbers that stress sizes, ranks, steps and rates: zero, negatives, fractions, overflows. */
export const oddNumbers = [
  "0",
  "-1",
  "1",
  "2",
  "3",
  "-0",
  "0.0",
  "2.5",
  "1e30",
  "1e-30",
  "1e400",
  "-1e30",
  "65536",
  "2147483647",
  "2147483648",
  "4294967296",
  "9007199254740993",
  "99999999999999999999999",
];

const replace = (text: string, t: Token, by: string) =>
  text.slice(0, t.start) + by + text.slice(t.end);

type Mutation = (text: string, random: () => number) => string;

/** The operators of tests/fuzz.test.ts, and replacements that keep most mutants parseable. */
export const mutations: Record<string, Mutation> = {
  deleteToken(text, random) {
    const tokens = tokensOf(text);
    return tokens.length === 0 ? text : replace(text, pick(tokens, random), "");
  },
  duplicateToken(text, random) {
    const tokens = tokensOf(text);
    if (tokens.length === 0) return text;
    const t = pick(tokens, random);
    return text.slice(0, t.end) + " " + t.image + text.slice(t.end);
  },
  swapTokens(text, random) {
    const tokens = tokensOf(text);
    if (tokens.length < 2) return text;
    let [a, b] = [pick(tokens, random), pick(tokens, random)];
    if (a.start > b.start) [a, b] = [b, a];
    if (a.end > b.start) return text;
    return (
      text.slice(0, a.start) + b.image + text.slice(a.end, b.start) + a.image + text.slice(b.end)
    );
  },
  /** Any token replaced by another token of the same file. */
  replaceToken(text, random) {
    const tokens = tokensOf(text);
    if (tokens.length === 0) return text;
    return replace(text, pick(tokens, random), pick(tokens, random).image);
  },
  /** A number replaced by an odd number, or a name by a number. */
  replaceNumber(text, random) {
    const tokens = tokensOf(text);
    const numbers = tokens.filter((t) => /^[0-9]/.test(t.image));
    const words = tokens.filter((t) => t.name);
    const target = numbers.length > 0 && random() < 0.8 ? numbers : words;
    if (target.length === 0) return text;
    return replace(text, pick(target, random), pick(oddNumbers, random));
  },
  /** A name replaced by another name of the same file. */
  replaceName(text, random) {
    const words = tokensOf(text).filter((t) => t.name);
    if (words.length === 0) return text;
    return replace(text, pick(words, random), pick(words, random).image);
  },
  truncate(text, random) {
    return text.slice(0, Math.floor(random() * text.length));
  },
  injectBytes(text, random) {
    const at = Math.floor(random() * text.length);
    const junk = ["\0", "\u00e9", "\uFEFF", "\r", "\n", '"', "/*", "{", "}", "(", ")", "[", "]"];
    let inserted = "";
    for (let i = 0, n = 1 + Math.floor(random() * 3); i < n; i++) inserted += pick(junk, random);
    return text.slice(0, at) + inserted + text.slice(at);
  },
};

/** How often each operator runs: the replacements keep programs parseable, so reach further. */
const weights: [string, number][] = [
  ["replaceNumber", 8],
  ["replaceName", 6],
  ["replaceToken", 2],
  ["deleteToken", 3],
  ["duplicateToken", 2],
  ["swapTokens", 2],
  ["truncate", 1],
  ["injectBytes", 1],
];
const weighted = weights.flatMap(([name, w]) => Array<string>(w).fill(name));

/** The files fuzzed, by path relative to the package root, and which entries compile each. */
export interface Corpus {
  files: Map<string, string>;
  /** Examples with a train block. */
  entries: string[];
  /** For each file, the entries that import it (directly or through another file). */
  usedBy: Map<string, string[]>;
}

export function loadCorpus(root = packageRoot()): Corpus {
  const files = new Map<string, string>();
  for (const folder of ["examples", "stdlib"])
    for (const name of readdirSync(join(root, folder)).sort())
      if (name.endsWith(".lrk"))
        files.set(`${folder}/${name}`, readFileSync(join(root, folder, name), "utf8"));
  const imports = (path: string): string[] => {
    const text = files.get(path)!;
    const out: string[] = [];
    for (const m of text.matchAll(/^import\s+(?:std\.(\w+)|"\.\/([\w.]+)")/gm))
      out.push(m[1] ? `stdlib/${m[1]}.lrk` : `examples/${m[2]}`);
    return out.filter((p) => files.has(p));
  };
  const closure = (path: string, seen = new Set<string>()): Set<string> => {
    for (const dep of imports(path))
      if (!seen.has(dep)) {
        seen.add(dep);
        closure(dep, seen);
      }
    return seen;
  };
  const entries = [...files.keys()].filter(
    (p) => p.startsWith("examples/") && /^train\s/m.test(files.get(p)!),
  );
  const usedBy = new Map<string, string[]>();
  for (const entry of entries) {
    usedBy.set(entry, [entry]);
    for (const dep of closure(entry)) usedBy.set(dep, [...(usedBy.get(dep) ?? []), entry]);
  }
  return { files, entries, usedBy };
}

export interface Mutant {
  index: number;
  /** The file mutated and its new text. */
  path: string;
  text: string;
  /** The example compiled (the mutated file itself, or one that imports it). */
  entry: string;
  applied: string[];
}

/** The `index`th mutant of a run seeded with `seed`: the same for every run of the same seed. */
export function makeMutant(corpus: Corpus, seed: number, index: number): Mutant {
  const random = rng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  const path = pick([...corpus.usedBy.keys()], random);
  const entry = pick(corpus.usedBy.get(path)!, random);
  let text = corpus.files.get(path)!;
  const applied: string[] = [];
  // Mostly one mutation: a program with one thing wrong gets furthest through the compiler.
  const steps = random() < 0.6 ? 1 : 2 + Math.floor(random() * 2);
  for (let s = 0; s < steps; s++) {
    const name = pick(weighted, random);
    applied.push(name);
    text = mutations[name]!(text, random);
  }
  return { index, path, text, entry, applied };
}

export type Outcome =
  | { kind: "built"; kernels: number }
  | { kind: "diagnostics"; codes: string[] }
  | { kind: "internal"; phase: string; stack: string }
  | { kind: "badSpan"; message: string }
  | { kind: "noBuild" }
  /** The model has more parameter tensors than the limit: not compiled. */
  | { kind: "large"; params: number };

/**
 * One mutant through the compiler, in a folder holding copies of examples/ and stdlib/ (the
 * mutated file written over its copy, and restored afterwards).
 */
export function runMutant(
  root: string,
  original: string,
  mutant: Mutant,
  paramLimit = Infinity,
): Outcome {
  writeFileSync(join(root, mutant.path), mutant.text);
  try {
    const entryText = mutant.path === mutant.entry ? mutant.text : undefined;
    return compileAndPlan(root, entryText, mutant, paramLimit);
  } finally {
    writeFileSync(join(root, mutant.path), original);
  }
}

function compileAndPlan(
  root: string,
  entryText: string | undefined,
  mutant: Mutant,
  paramLimit: number,
): Outcome {
  let phase = "analyze";
  try {
    const text = entryText ?? readFileSync(join(root, mutant.entry), "utf8");
    const file = new SourceFile(join(root, mutant.entry), text);
    const stdlibDir = join(root, "stdlib");
    // Compile time grows with the model (32 layers of the tiny LM take about 15 s): a mutant that
    // turns `layers` into 128 is a valid program too large for the time bound, not a hang.
    const model = analyze(file, { requireTrain: true, stdlibDir }).trains[0]?.spec.model;
    const params = model ? allParams(model).length : 0;
    if (params > paramLimit) return { kind: "large", params };
    phase = "compile";
    const { compiled, diagnostics } = compile(file, { stdlibDir });
    phase = "render";
    const bad = badSpan(diagnostics);
    if (bad) return { kind: "badSpan", message: bad };
    renderDiagnostics(diagnostics);
    if (!compiled) {
      const codes = diagnostics.filter((d) => d.severity === "error").map((d) => d.code);
      return codes.length > 0 ? { kind: "diagnostics", codes } : { kind: "noBuild" };
    }
    let kernels = 0;
    for (const [name, program] of [
      ["planStep(step)", compiled.program.step],
      ["planStep(init)", compiled.program.initProgram],
    ] as const) {
      phase = name;
      try {
        kernels += planStep(program, portableTarget).kernels.length;
      } catch (e) {
        const failure = failureDiagnostic(e, { program: compiled.program });
        if (!failure) throw e;
        return { kind: "diagnostics", codes: [failure.code] };
      }
    }
    return { kind: "built", kernels };
  } catch (e) {
    return { kind: "internal", phase, stack: (e as Error)?.stack ?? String(e) };
  }
}

function badSpan(diagnostics: readonly Diagnostic[]): string | undefined {
  for (const d of diagnostics) {
    const at = d.at;
    if (!at) continue;
    const { start, end } = at.span;
    if (!(start >= 0 && start <= end && end <= at.file.text.length))
      return `${d.code} span ${start}..${end} outside ${at.file.path} (${at.file.text.length} chars): ${d.message}`;
  }
  return undefined;
}

/** A copy of examples/ and stdlib/ to mutate in. */
export function scratchCopy(corpus: Corpus): string {
  const root = mkdtempSync(join(tmpdir(), "lrk-fuzz-"));
  cpSync(join(packageRoot(), "examples"), join(root, "examples"), { recursive: true });
  cpSync(join(packageRoot(), "stdlib"), join(root, "stdlib"), { recursive: true });
  for (const [path, text] of corpus.files) writeFileSync(join(root, path), text);
  return root;
}

export interface Finding {
  mutant: Mutant;
  kind: "internal" | "hang" | "outOfMemory" | "badSpan" | "noBuild";
  detail: string;
  /** The lines of the mutated file that differ from the original. */
  diff: string;
}

export interface FuzzReport {
  mutants: number;
  built: number;
  diagnostics: number;
  /** Valid programs whose model grew past the limit (`layers: 128`): analyzed, not compiled. */
  large: number;
  findings: Finding[];
  seconds: number;
  slowestMs: number;
  slowest?: Mutant;
}

export interface FuzzOptions {
  mutants: number;
  seed?: number;
  /** A mutant that runs longer than this is a hang. */
  timeoutMs?: number;
  /** Called after each mutant (progress). */
  onMutant?: (done: number, report: FuzzReport) => void;
}

/** The compiled worker: the tests run from source, but a worker thread needs JavaScript. */
function workerScript(): string {
  const self = fileURLToPath(import.meta.url);
  return self.endsWith(".js") ? self : join(packageRoot(), "dist/bench/fuzz-compiler.js");
}

/** Runs `mutants` mutants, one at a time in a worker thread that is replaced after a hang. */
export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const { mutants, seed = 0x1a2b3c, timeoutMs = 20_000 } = options;
  const corpus = loadCorpus();
  const report: FuzzReport = {
    mutants: 0,
    built: 0,
    diagnostics: 0,
    large: 0,
    findings: [],
    seconds: 0,
    slowestMs: 0,
  };
  const started = performance.now();
  let worker: Worker | undefined;
  const root = scratchCopy(corpus);
  const startWorker = () =>
    new Worker(workerScript(), {
      workerData: { fuzzWorker: true, root },
      // About the stack of the main thread, where `lrkc` compiles: a deeper recursion overflows there.
      resourceLimits: { maxOldGenerationSizeMb: 3072, stackSizeMb: 1 },
    });
  try {
    for (let i = 0; i < mutants; i++) {
      const mutant = makeMutant(corpus, seed, i);
      worker ??= startWorker();
      const t0 = performance.now();
      const result = await oneMutant(worker, mutant, timeoutMs);
      const ms = performance.now() - t0;
      if (ms > report.slowestMs) [report.slowestMs, report.slowest] = [ms, mutant];
      report.mutants++;
      if ("lost" in result) {
        await worker.terminate();
        worker = undefined;
      }
      const finding = classify(result, report);
      if (finding)
        report.findings.push({
          mutant,
          ...finding,
          diff: lineDiff(corpus.files.get(mutant.path)!, mutant.text),
        });
      options.onMutant?.(i + 1, report);
    }
  } finally {
    await worker?.terminate();
    rmSync(root, { recursive: true, force: true });
  }
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

type WorkerResult = { outcome: Outcome } | { lost: "hang" | "outOfMemory"; detail: string };

function classify(
  result: WorkerResult,
  report: FuzzReport,
): Pick<Finding, "kind" | "detail"> | undefined {
  if ("lost" in result) return { kind: result.lost, detail: result.detail };
  const { outcome } = result;
  switch (outcome.kind) {
    case "built":
      report.built++;
      return undefined;
    case "diagnostics":
      report.diagnostics++;
      return undefined;
    case "large":
      report.large++;
      return undefined;
    case "internal":
      return { kind: "internal", detail: `in ${outcome.phase}: ${outcome.stack}` };
    case "badSpan":
      return { kind: "badSpan", detail: outcome.message };
    case "noBuild":
      return { kind: "noBuild", detail: "no plan and no error diagnostic" };
  }
}

function oneMutant(worker: Worker, mutant: Mutant, timeoutMs: number): Promise<WorkerResult> {
  return new Promise((resolve) => {
    const done = (result: WorkerResult) => {
      clearTimeout(timer);
      worker.off("message", onMessage);
      worker.off("error", onError);
      resolve(result);
    };
    const onMessage = (outcome: Outcome) => done({ outcome });
    const onError = (e: Error) =>
      done({
        lost: (e as { code?: string }).code === "ERR_WORKER_OUT_OF_MEMORY" ? "outOfMemory" : "hang",
        detail: e.stack ?? String(e),
      });
    const timer = setTimeout(
      () => done({ lost: "hang", detail: `still running after ${timeoutMs} ms` }),
      timeoutMs,
    );
    worker.on("message", onMessage);
    worker.on("error", onError);
    worker.postMessage(mutant);
  });
}

/** The changed lines, as `-` and `+` lines with line numbers (enough to reproduce by hand). */
export function lineDiff(before: string, after: string): string {
  const a = before.split("\n");
  const b = after.split("\n");
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (
    tail < a.length - head &&
    tail < b.length - head &&
    a[a.length - 1 - tail] === b[b.length - 1 - tail]
  )
    tail++;
  const removed = a.slice(head, a.length - tail).map((l, i) => `-${head + i + 1}: ${l}`);
  const added = b.slice(head, b.length - tail).map((l, i) => `+${head + i + 1}: ${l}`);
  return [...removed, ...added].join("\n");
}

function workerMain(root: string): void {
  const corpus = loadCorpus();
  // A worker cut off by a hang may have left its mutant in place.
  for (const [path, text] of corpus.files) writeFileSync(join(root, path), text);
  const paramLimit = largeModelLimit(root, corpus);
  parentPort!.on("message", (mutant: Mutant) => {
    parentPort!.postMessage(runMutant(root, corpus.files.get(mutant.path)!, mutant, paramLimit));
  });
}

/** Models with more parameter tensors than 4 times the largest example's are not compiled. */
export function largeModelLimit(root: string, corpus: Corpus): number {
  let most = 0;
  for (const entry of corpus.entries) {
    const file = new SourceFile(join(root, entry), corpus.files.get(entry)!);
    const model = analyze(file, { requireTrain: true, stdlibDir: join(root, "stdlib") }).trains[0]
      ?.spec.model;
    if (model) most = Math.max(most, allParams(model).length);
  }
  return 4 * most;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const option = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
  const count = Number(args.find((a) => /^\d+$/.test(a)) ?? 5000);
  const seed = Number(option("--seed") ?? 0x1a2b3c);
  const timeoutMs = Number(option("--timeout") ?? 20) * 1000;
  const report = await runFuzz({
    mutants: count,
    seed,
    timeoutMs,
    onMutant(done, r) {
      if (done % 250 === 0)
        process.stderr.write(
          `${done}/${count}: ${r.built} built, ${r.diagnostics} diagnostics, ${r.findings.length} findings\n`,
        );
    },
  });
  if (args.includes("--json")) {
    process.stdout.write(JSON.stringify(report, null, 2) + "\n");
    return;
  }
  for (const f of report.findings) {
    const m = f.mutant;
    console.log(
      `#${m.index} ${f.kind}: ${m.path} (${m.applied.join(", ")}) compiled as ${m.entry}\n${f.diff}\n${f.detail.split("\n").slice(0, 8).join("\n")}\n`,
    );
  }
  console.log(
    `${report.mutants} mutants (seed ${seed}): ${report.built} built, ${report.diagnostics} ended in diagnostics, ${report.large} too large to compile (over 4 times the largest example's parameter tensors), ${report.findings.length} findings; ${report.seconds.toFixed(1)} s, slowest ${(report.slowestMs / 1000).toFixed(2)} s (#${report.slowest?.index})`,
  );
  process.exitCode = report.findings.length > 0 ? 1 : 0;
}

const data = workerData as { fuzzWorker?: boolean; root: string } | null;
if (!isMainThread && data?.fuzzWorker) workerMain(data.root);
else if (isMainThread && process.argv[1] === fileURLToPath(import.meta.url)) await main();
