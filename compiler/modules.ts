// Loading a program and everything it imports. `std.x` is `stdlib/x.lrk` of this package;
// `"./y.lrk"` is a file relative to the importing file. Each module is parsed once; cycles and
// missing modules are diagnostics on the import that caused them.
import {
  closeSync,
  constants,
  existsSync,
  fstatSync,
  openSync,
  readSync,
  statSync,
  type Stats,
} from "node:fs";
import { dirname, isAbsolute, join, relative, resolve as resolvePath } from "node:path";
import { fileURLToPath } from "node:url";
import type * as A from "../language/ast.js";
import { error, Log, type Diagnostic, type Location } from "../language/diagnostics.js";
import { parseStdModule, parseUserFile } from "../language/parse-cache.js";
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
  const cwd = workingDirectory();
  if (cwd === undefined) return path;
  const rel = relative(cwd, path);
  return rel.startsWith("..") ? path : rel;
}

/** The working directory, or undefined when it was deleted (process.cwd() then throws ENOENT). */
export function workingDirectory(): string | undefined {
  try {
    return process.cwd();
  } catch {
    return undefined;
  }
}

/** No .lrk program is this large; a bigger "source" is a wrong path (a data set, a device). */
export const maxSourceBytes = 16 * 1024 * 1024;

export type ReadResult = { file: SourceFile } | { diagnostic: Diagnostic };

export interface ReadOptions {
  /** How messages name the file (default: the path). */
  name?: string;
  /** The SourceFile's path, shown in later diagnostics (default: the path). */
  shownAs?: string;
  /** The import that asked for the file, if any: diagnostics point at it. */
  at?: Location;
  /** Help for a directory given where a file was expected. */
  directoryHelp?: string;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Reads a source file, every failure a diagnostic (E0001, E0002). Only regular files are read:
 * a FIFO would block forever and a device (`/dev/zero`) never ends, so the kind is checked before
 * opening, the file is opened non-blocking and checked again, and at most `maxSourceBytes` are read.
 */
export function readSourceFile(path: string, options: ReadOptions = {}): ReadResult {
  const name = options.name ?? path;
  const fail = (message: string, help?: string): ReadResult => ({
    diagnostic: error("E0001", message, options.at, { help }),
  });
  if (!isAbsolute(path) && workingDirectory() === undefined)
    return fail(
      `cannot read \`${name}\`: the working directory no longer exists`,
      "change to an existing directory (`cd`), or pass an absolute path",
    );
  let bytes: Buffer;
  try {
    const refused = refuseKind(statSync(path), name, options);
    if (refused) return refused;
    const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
    try {
      // The path may have been replaced between stat and open.
      const again = refuseKind(fstatSync(fd), name, options);
      if (again) return again;
      const read = readAtMost(fd, maxSourceBytes + 1);
      if (read.length > maxSourceBytes)
        return tooLarge(`over ${megabytes(maxSourceBytes)}`, name, options);
      bytes = read;
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason =
      code === "ENOENT"
        ? "no such file"
        : code === "EACCES" || code === "EPERM"
          ? "permission denied"
          : code === "ENOTDIR"
            ? "a part of the path is a file, not a directory"
            : code === "ELOOP"
              ? "too many levels of symbolic links"
              : ((e as Error).message ?? String(e));
    return fail(
      `cannot read \`${name}\`: ${reason}`,
      code === "ENOENT" ? "check the path" : undefined,
    );
  }
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    return {
      diagnostic: error("E0002", `\`${name}\` is not UTF-8 text`, options.at, {
        help: "lrk source files must be saved as UTF-8",
      }),
    };
  }
  return { file: new SourceFile(options.shownAs ?? path, text) };
}

/** A diagnostic for anything but a regular file of a sensible size, else undefined. */
function refuseKind(stats: Stats, name: string, options: ReadOptions): ReadResult | undefined {
  const at = options.at;
  if (stats.isDirectory())
    return {
      diagnostic: error("E0001", `\`${name}\` is a directory, not a .lrk file`, at, {
        help: options.directoryHelp,
      }),
    };
  if (!stats.isFile()) {
    const kind = stats.isFIFO()
      ? "a named pipe (FIFO)"
      : stats.isCharacterDevice()
        ? "a character device"
        : stats.isBlockDevice()
          ? "a block device"
          : stats.isSocket()
            ? "a socket"
            : "something other than a file";
    return {
      diagnostic: error("E0001", `\`${name}\` is ${kind}, not a regular .lrk file`, at, {
        help: "lrk reads programs only from regular files: save the program to a file and pass that",
      }),
    };
  }
  if (stats.size > maxSourceBytes) return tooLarge(megabytes(stats.size), name, options);
  return undefined;
}

const megabytes = (n: number) => `${(n / (1024 * 1024)).toFixed(1)} MB`;

/** `size`: what the file is, as words (`20.0 MB`; `over 16.0 MB` when it grew while read). */
function tooLarge(size: string, name: string, options: ReadOptions): ReadResult {
  return {
    diagnostic: error(
      "E0001",
      `\`${name}\` is ${size}: too large for a source file (the limit is ${megabytes(maxSourceBytes)})`,
      options.at,
      { help: "a .lrk program is a small text file; check that this is the file you meant" },
    ),
  };
}

/** Up to `limit` bytes of an open file (fewer at its end). */
function readAtMost(fd: number, limit: number): Buffer {
  const chunks: Buffer[] = [];
  let total = 0;
  while (total < limit) {
    const chunk = Buffer.allocUnsafe(Math.min(1 << 20, limit - total));
    let n: number;
    try {
      n = readSync(fd, chunk, 0, chunk.length, null);
    } catch (e) {
      // A non-blocking descriptor with nothing to read yet: treat as the end.
      if ((e as NodeJS.ErrnoException).code === "EAGAIN") break;
      throw e;
    }
    if (n === 0) break;
    chunks.push(chunk.subarray(0, n));
    total += n;
  }
  return Buffer.concat(chunks, total);
}

/** Modules provided by the runtime rather than by a .lrk file. */
export const nativeModules = new Set(["std.data"]);

export class ModuleLoader {
  readonly modules = new Map<string, Module>();
  /** Where this loader reports: the compilation's log. */
  get diagnostics(): Diagnostic[] {
    return this.log.diagnostics;
  }
  /** Modules whose imports are being loaded, the importer below the imported. */
  private readonly stack: { path: string; module: Module; next: number }[] = [];
  private readonly onStack = new Set<string>();
  private draining = false;
  /** Every module, each after the modules it imports (cycles aside): an order to resolve in. */
  readonly loaded: Module[] = [];

  constructor(
    readonly stdlibDir: string = join(packageRoot(), "stdlib"),
    readonly log: Log = new Log(),
  ) {}

  /** Parses an entry file and, transitively, everything it imports. */
  loadEntry(file: SourceFile): Module {
    return this.loadFile(resolvePath(file.path), file, file.path)!;
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
      const at = { file: from.file, span: imp.source.path.span };
      const module = this.loadFile(path, undefined, path, at, imp.source.path.value);
      return module ? { module } : {};
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
    return ["std.nn", "std.adapters", "std.optim", "std.quant", "std.models", "std.data"];
  }

  /**
   * The module at `path`: the loaded one, or a new one parsed now whose imports are loaded by
   * `drain`. Undefined (reported) when the file cannot be read.
   */
  private loadFile(
    path: string,
    file: SourceFile | undefined,
    name: string,
    importedAt?: Location,
    /** The path as the import wrote it, for messages. */
    written?: string,
  ): Module | undefined {
    const existing = this.modules.get(path);
    if (existing) {
      if (this.onStack.has(path) && importedAt) {
        const paths = this.stack.map((frame) => frame.path);
        const cycle = [...paths.slice(paths.indexOf(path)), path].map(
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
    let source = file;
    if (!source) {
      const read = readSourceFile(path, {
        name: written ?? name,
        shownAs: displayPath(path),
        at: importedAt,
        directoryHelp: 'import a .lrk file in it, such as `import "./dir/file.lrk".{Name}`',
      });
      if ("diagnostic" in read) {
        this.diagnostics.push(read.diagnostic);
        return undefined;
      }
      source = read.file;
    }
    // trees come from the parse cache when this text was parsed before
    const std = relative(this.stdlibDir, path);
    const parsed =
      !std.startsWith("..") && !isAbsolute(std)
        ? parseStdModule(source, std.replace(/\.lrk$/, ""))
        : parseUserFile(source);
    this.diagnostics.push(...parsed.diagnostics);
    const module: Module = { name, file: source, program: parsed.program };
    this.modules.set(path, module);
    this.stack.push({ path, module, next: 0 });
    this.onStack.add(path);
    this.drain();
    return module;
  }

  /**
   * Loads the imports of every module on the stack, depth first, with an explicit stack rather
   * than recursion: an import chain thousands of files deep must not overflow the call stack.
   * The stack is the chain of files being loaded, which is what a cycle report shows.
   */
  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.stack.length > 0) {
        const frame = this.stack[this.stack.length - 1]!;
        const items = frame.module.program.items;
        while (frame.next < items.length && items[frame.next]!.kind !== "Import") frame.next++;
        if (frame.next < items.length) {
          // May push the imported module's frame; its imports are then loaded first.
          this.importTarget(frame.module, items[frame.next++] as A.Import);
          continue;
        }
        this.stack.pop();
        this.onStack.delete(frame.path);
        this.loaded.push(frame.module);
      }
    } finally {
      this.draining = false;
    }
  }
}
