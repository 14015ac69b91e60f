// The compiler from the top: text to placed training program, one pass after another.
// Later stages (graph, autodiff, update lowering, fusion, memory, plan, WGSL) continue from here.
import { normalize, type Diagnostic } from "../language/diagnostics.js";
import type { SourceFile } from "../language/source.js";
import { ModuleLoader } from "./modules.js";
import { place, type Placement } from "./place.js";
import { Resolver } from "./resolve.js";
import { resolveTrain, selectTrain, type TrainSpec } from "./train.js";

export interface Analysis {
  diagnostics: Diagnostic[];
  /** One per train block checked (the chosen one, or all of them when none was chosen). */
  trains: { spec: TrainSpec; placement: Placement }[];
  session: Session;
}

export interface AnalyzeOptions {
  /** Which train block; when absent, every train block is checked. */
  train?: string;
  /** Require exactly one train block (for build and train). */
  requireTrain?: boolean;
}

/** The loader and resolver of an analysis, for the stages that continue from it. */
export interface Session {
  loader: ModuleLoader;
  resolver: Resolver;
}

export function analyze(file: SourceFile, options: AnalyzeOptions = {}): Analysis {
  const loader = new ModuleLoader();
  const entry = loader.loadEntry(file);
  const resolver = new Resolver(loader);
  const trains: Analysis["trains"] = [];
  const done = () => ({
    diagnostics: normalize([...loader.diagnostics, ...resolver.diagnostics]),
    trains,
    session: { loader, resolver },
  });
  if (loader.diagnostics.some((d) => d.code.startsWith("E01"))) return done();

  resolver.scopeOf(entry);
  for (const module of loader.modules.values()) resolver.scopeOf(module);

  const decls =
    options.train !== undefined || options.requireTrain
      ? [selectTrain(resolver, entry, options.train)].filter((d) => d !== undefined)
      : entry.program.items.filter((i) => i.kind === "Train");
  for (const decl of decls) {
    const spec = resolveTrain(resolver, entry, decl);
    if (!spec) continue;
    trains.push({ spec, placement: place(resolver, spec) });
  }
  return done();
}
