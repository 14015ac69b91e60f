// Loading a program and everything it imports. `std.x` is `stdlib/x.lrk` of this package;
// `"./y.lrk"` is a file relative to the importing file. Each module is parsed once; cycles and
// missing modules are diagnostics on the import that caused them.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve as resolvePath } from "node:path";
import { fileURLToPath } from "node:url";
import type * as A from "../language/ast.js";
import { error, Log, type Diagnostic } from "../language/diagnostics.js";
import { parse } from "../language/parse.js";
import { SourceFile } from "../language/source.js";

export interface Module {
  /** `std.nn`, or the file's path for user files. */
  name: string;
  file: SourceFile;
  program: A.Program;
}

/** The package root (the folder holding package.json), from either src or dist. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "stdlib"))) return dir;
    dir = dirname(dir);
  }
  throw new Error("cannot find the lrk package root (no stdlib/ next to package.json)");
}

/** Paths in diagnostics are relative to the working directory when under it. */
function displayPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel.startsWith("..") ? path : rel;
}

/** Modules provided by the runtime rather than by a .lrk file. */
export const nativeModules = new Set(["std.data"]);

export class ModuleLoader {
  readonly modules = new Map<string, Module>();
  /** Where this loader reports: the compilation's log. */
  get diagnostics(): Diagnostic[] {
    return this.log.diagnostics;
  }
  private readonly loading: string[] = [];

  constructor(
    readonly stdlibDir: string = join(packageRoot(), "stdlib"),
    readonly log: Log = new Log(),
  ) {}

  /** Parses an entry file and, transitively, everything it imports. */
  loadEntry(file: SourceFile): Module {
    return this.loadFile(resolvePath(file.path), file, file.path);
  }

  /** `std.nn` → the module, loading it on first use; undefined if there is no such module. */
  std(name: string): Module | undefined {
    const path = join(this.stdlibDir, name.slice("std.".length).replace(/\./g, "/") + ".lrk");
    if (!existsSync(path)) return undefined;
    return this.loadFile(path, undefined, name);
  }

  /** Does `std.a.b` name a module (a .lrk file or a native module)? */
  isStdModule(name: string): boolean {
    if (nativeModules.has(name)) return true;
    return existsSync(join(this.stdlibDir, name.slice("std.".length).replace(/\./g, "/") + ".lrk"));
  }

  /** The module an import statement refers to, loading it; reports and returns undefined on failure. */
  importTarget(from: Module, imp: A.Import): { module?: Module; native?: string; item?: string } {
    if (imp.source.kind === "file") {
      const path = resolvePath(dirname(from.file.path), imp.source.path.value);
      if (!existsSync(path)) {
        this.diagnostics.push(
          error(
            "E0201",
            `cannot find \`${imp.source.path.value}\``,
            { file: from.file, span: imp.source.path.span },
            {
              help: `the path is relative to ${dirname(from.file.path) || "."}`,
            },
          ),
        );
        return {};
      }
      return {
        module: this.loadFile(path, undefined, path, {
          file: from.file,
          span: imp.source.path.span,
        }),
      };
    }
    const parts = imp.source.parts.map((p) => p.name);
    const full = parts.join(".");
    const at = { file: from.file, span: imp.source.span };
    if (parts[0] !== "std") {
      this.diagnostics.push(
        error("E0201", `cannot find module \`${full}\``, at, {
          help: 'standard modules start with `std.`; import your own files with `import "./file.lrk".{Name}`',
        }),
      );
      return {};
    }
    if (nativeModules.has(full)) return { native: full };
    const direct = this.isStdModule(full) ? this.std(full) : undefined;
    if (direct) return { module: direct };
    // `import std.nn.Linear`: the last part is an item of `std.nn`.
    if (!imp.items && parts.length > 2) {
      const parent = parts.slice(0, -1).join(".");
      if (nativeModules.has(parent)) return { native: parent, item: parts[parts.length - 1] };
      const module = this.isStdModule(parent) ? this.std(parent) : undefined;
      if (module) return { module, item: parts[parts.length - 1] };
    }
    this.diagnostics.push(
      error("E0201", `cannot find module \`${full}\``, at, {
        help: `the standard modules are ${this.stdModuleNames().join(", ")}`,
      }),
    );
    return {};
  }

  stdModuleNames(): string[] {
    return ["std.nn", "std.adapters", "std.optim", "std.quant", "std.data"];
  }

  private loadFile(
    path: string,
    file: SourceFile | undefined,
    name: string,
    importedAt?: { file: SourceFile; span: A.Program["span"] },
  ): Module {
    const existing = this.modules.get(path);
    if (existing) {
      if (this.loading.includes(path) && importedAt) {
        const cycle = [...this.loading.slice(this.loading.indexOf(path)), path].map(
          (p) => this.modules.get(p)?.name ?? p,
        );
        this.diagnostics.push(
          error("E0203", `import cycle: ${cycle.join(" → ")}`, importedAt, {
            help: "move the shared definitions into a file that both import",
          }),
        );
      }
      return existing;
    }
    const source = file ?? new SourceFile(displayPath(path), readFileSync(path, "utf8"));
    const parsed = parse(source);
    this.diagnostics.push(...parsed.diagnostics);
    const module: Module = { name, file: source, program: parsed.program };
    this.modules.set(path, module);
    this.loading.push(path);
    for (const item of parsed.program.items)
      if (item.kind === "Import") this.importTarget(module, item);
    this.loading.pop();
    return module;
  }
}
