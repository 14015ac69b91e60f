// The compiler, from the top. `compile` takes a program's text to the training run the runtime
// executes; `planStep` takes one of its graph programs to the kernel plan a WebGPU device runs.
// Each line is one phase, in order; every phase reports into one log and the driver stops at the
// first phase that found an error. Nothing here reads data or touches a device.
import { Log, type Diagnostic, type Location } from "../language/diagnostics.js";
import type { SourceFile } from "../language/source.js";
import { checkModels } from "./check-models.js";
import { checkPooledStates } from "./pooled-states.js";
import { allModules } from "./instantiate.js";
import { hostScalars } from "./host-scalars.js";
import { buildInit } from "./init.js";
import { ModuleLoader, type Module } from "./modules.js";
import { place, type Placement } from "./place.js";
import {
  assemblePlan,
  emitKernels,
  fuseEntries,
  planBuffers,
  matmulChooser,
  type Plan,
  type PlanTarget,
} from "./plan.js";
import { storeFrozenAsF16, withoutHalfStorage } from "./half-storage.js";
import type { GraphProgram, TrainProgram } from "./program.js";
import { Resolver } from "./resolve.js";
import { buildStep } from "./step.js";
import { buildGeneration } from "./generation.js";
import { resolveTrain, selectTrain, type TrainOverrides, type TrainSpec } from "./train.js";
import { runSettings, trainProgram } from "./train-program.js";

export interface CompileOptions extends TrainOverrides {
  /** Which train block (when the file has several). */
  train?: string;
  /** Evaluate on this `data` declaration of the file (its valid split) instead of `eval … on`. */
  evalData?: string;
  /** The folder `std.x` imports are read from (default: this package's stdlib/). */
  stdlibDir?: string;
  /** Store the step's frozen tensors as f16 (`--frozen-f16`, compiler/half-storage.ts). */
  frozenF16?: boolean;
  /** Also build `lrkc generate`'s program with a KV cache (compiler/generation.ts). */
  generation?: boolean;
}

/** The compiled train block: the compiler's view (for reports) and the runtime's contract. */
export interface Compiled {
  spec: TrainSpec;
  placement: Placement;
  program: TrainProgram;
}

export interface CompileResult {
  compiled?: Compiled;
  diagnostics: Diagnostic[];
}

/** Text → training run: every phase of the compiler, in order. */
export function compile(file: SourceFile, options: CompileOptions = {}): CompileResult {
  const front = analyze(file, { ...options, requireTrain: true }); // parse, resolve, place
  const done = (compiled?: Compiled) => ({
    compiled: compiled && !log.hasErrors() ? compiled : undefined,
    diagnostics: log.done(),
  });
  const { log, resolver } = front;
  const placed = front.trains[0];
  if (!placed || !resolver || log.hasErrors()) return done();
  const { spec, placement } = placed;
  const settings = runSettings(resolver, spec, options.evalData); //  data fields, eval, schedule
  if (!settings || log.hasErrors()) return done();
  const init = buildInit(resolver, spec, placement); //               initializers → init graph
  if (!init) return done();
  const built = buildStep(resolver, spec, placement, settings.data.fields, init.buffers); // step graph
  if (!built || !resolver.attempt(() => checkPooledStates(resolver, built, spec.steps)))
    return done();
  const scalars = hostScalars(built); //                              step-only scalars → host f64
  // frozen tensors as f16: `--frozen-f16` turns it on whatever the block's `frozen_storage` says
  const frozenF16 = options.frozenF16 || spec.frozenStorage === "f16";
  const step = frozenF16 ? storeFrozenAsF16(scalars) : scalars;
  const program = trainProgram(spec, placement, settings, init, step);
  const input = settings.data.fields["input"];
  if (options.generation && step.predict && input?.shape.length === 2 && spec.loss) {
    const generation = buildGeneration(
      resolver,
      spec,
      placement,
      init.buffers,
      { capacity: input.shape[1]!, ...(input.range ? { range: input.range } : {}) },
      { file, span: spec.loss.span },
    );
    program.generation = generation;
  }
  return done({ spec, placement, program });
}

export interface Analysis {
  log: Log;
  diagnostics: Diagnostic[];
  /** One per train block analyzed (the chosen one, or all of them when none was chosen). */
  trains: { spec: TrainSpec; placement: Placement }[];
  resolver?: Resolver;
}

/**
 * The front of the compiler, up to placement: parse and load imports, resolve names, then for
 * the chosen train block (or every one) resolve its settings and place its rules.
 */
export function analyze(
  file: SourceFile,
  options: TrainOverrides & {
    train?: string;
    requireTrain?: boolean;
    stdlibDir?: string;
    /** Lower the forwards of the file's models no train block trains (compiler/check-models.ts). */
    checkModels?: boolean;
  } = {},
): Analysis {
  const log = new Log();
  const trains: Analysis["trains"] = [];
  const done = (resolver?: Resolver): Analysis => ({
    log,
    diagnostics: log.done(),
    trains,
    resolver,
  });
  const loader = new ModuleLoader(options.stdlibDir, log);
  const entry = loader.loadEntry(file); //                            parse + imports
  // Syntax errors stop here; a missing import is reported and resolution goes on without it.
  if (log.diagnostics.some((d) => d.code.startsWith("E01"))) return done();
  const resolver = resolveModules(loader, entry); //                  names, constants
  const decls =
    options.train !== undefined || options.requireTrain
      ? [selectTrain(resolver, entry, options.train)].filter((d) => d !== undefined)
      : entry.program.items.filter((i) => i.kind === "Train");
  for (const decl of decls) {
    const spec = resolveTrain(resolver, entry, decl, options); //     the train block
    if (spec) trains.push({ spec, placement: place(resolver, spec) }); // adapt/freeze/optimize/…
  }
  if (options.checkModels && !log.hasErrors()) {
    // models no train block trains: their forwards lowered on their own
    const trained = trains.flatMap((t) => allModules(t.spec.model).map((m) => m.def));
    checkModels(resolver, entry, new Set(trained));
  }
  return done(resolver);
}

/** Every module of the program resolved (so that problems in unused definitions are found too). */
function resolveModules(loader: ModuleLoader, entry: Module): Resolver {
  const resolver = new Resolver(loader);
  // Imported modules first: each scope then finds its imports' scopes made, so an import chain
  // thousands of files deep is resolved without recursing through it.
  for (const module of loader.loaded) resolver.scopeOf(module);
  resolver.scopeOf(entry);
  for (const module of loader.modules.values()) resolver.scopeOf(module);
  return resolver;
}

/** `lrkc check`: the whole file analyzed, then each train block compiled on its own. */
export function check(file: SourceFile): { compiled: Compiled[]; diagnostics: Diagnostic[] } {
  const analysis = analyze(file, { checkModels: true });
  const { log } = analysis;
  const compiled: Compiled[] = [];
  if (log.hasErrors()) return { compiled, diagnostics: analysis.diagnostics };
  for (const { spec } of analysis.trains) {
    const result = compile(file, { train: spec.decl.name.name });
    log.add(...result.diagnostics);
    if (result.compiled) compiled.push(result.compiled);
  }
  return { compiled, diagnostics: log.done() };
}

/**
 * Graph program → kernel plan: fuse → memory plan → kernels → plan. The only place a plan is
 * made: `lrkc build --emit plan` and the device show and run what this returns for the same
 * target.
 */
export function planStep(given: GraphProgram, target: PlanTarget): Plan {
  // f16 storage needs `shader-f16`: without it the frozen tensors stay f32 (the CLI says so)
  const program = target.features.includes("shader-f16") ? given : withoutHalfStorage(given);
  // kernel groups per entry
  const fused = fuseEntries(
    program,
    target.limits,
    target.lowRankMax,
    target.lowRankLoopMax,
    target.lowRankChoices,
  );
  const buffers = planBuffers(program, fused, target.limits, matmulChooser(target)); // liveness, reuse, limits
  const kernels = emitKernels(program, fused, buffers, target); // WGSL per group
  return assemblePlan(program, buffers, kernels);
}

export type { Location, PlanTarget };
