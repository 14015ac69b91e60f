// The shape of the codebase the spine promises: the runtime sees the compiler only through its
// contract (compiler/program.ts) and the IR; no function in compiler/ or runtime/ is over 200
// lines; compiler/compile.ts names every phase.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { root } from "./helpers.js";

function sources(dir: string): string[] {
  return readdirSync(join(root, dir)).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(join(root, path)).isDirectory()) return sources(path);
    return name.endsWith(".ts") ? [path] : [];
  });
}

function parsed(path: string): ts.SourceFile {
  const text = readFileSync(join(root, path), "utf8");
  return ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true);
}

describe("the spine", () => {
  it("runtime/ imports from compiler/ only the contract (program.ts) and the IR (ir.ts)", () => {
    const found: string[] = [];
    for (const path of sources("runtime")) {
      for (const statement of parsed(path).statements) {
        const spec =
          (ts.isImportDeclaration(statement) || ts.isExportDeclaration(statement)) &&
          statement.moduleSpecifier &&
          ts.isStringLiteral(statement.moduleSpecifier)
            ? statement.moduleSpecifier.text
            : undefined;
        if (spec?.includes("/compiler/") && !/\/compiler\/(program|ir)\.js$/.test(spec))
          found.push(`${path}: ${spec}`);
      }
    }
    expect(found).toEqual([]);
  });

  // chevrotain's package entry is hundreds of modules (a third of a 12-layer build's start-up);
  // language/chevrotain.ts loads its one-file bundle, and two copies would not know each other's
  // token types.
  it("imports chevrotain's code only through language/chevrotain.ts", async () => {
    const found: string[] = [];
    for (const dir of ["language", "compiler", "runtime", "cli"])
      for (const path of sources(dir)) {
        if (path === join("language", "chevrotain.ts")) continue;
        for (const statement of parsed(path).statements)
          if (
            ts.isImportDeclaration(statement) &&
            ts.isStringLiteral(statement.moduleSpecifier) &&
            statement.moduleSpecifier.text.startsWith("chevrotain") &&
            !statement.importClause?.isTypeOnly
          )
            found.push(path);
      }
    expect(found).toEqual([]);
    const { Lexer } = await import("../language/chevrotain.js");
    const { createRequire } = await import("node:module");
    const entry = createRequire(import.meta.url).resolve("chevrotain");
    expect(existsSync(join(entry, "../../chevrotain.mjs"))).toBe(true); // the bundle is used
    expect(Lexer).not.toBe((await import("chevrotain")).Lexer);
  });

  it("has no function longer than 200 lines in compiler/ or runtime/", () => {
    const long: string[] = [];
    for (const path of [...sources("compiler"), ...sources("runtime")]) {
      const file = parsed(path);
      const visit = (node: ts.Node): void => {
        if (ts.isFunctionLike(node) && "body" in node && node.body) {
          const start = file.getLineAndCharacterOfPosition(node.getStart()).line;
          const end = file.getLineAndCharacterOfPosition(node.end).line;
          if (end - start + 1 > 200)
            long.push(
              `${relative(root, join(root, path))}:${start + 1} (${end - start + 1} lines)`,
            );
        }
        ts.forEachChild(node, visit);
      };
      visit(file);
    }
    expect(long).toEqual([]);
  });

  it("compiler/compile.ts runs every phase from text to plan, in order", () => {
    const text = readFileSync(join(root, "compiler", "compile.ts"), "utf8");
    const order = [
      "loadEntry",
      "resolveModules",
      "resolveTrain",
      "place(",
      "runSettings",
      "buildInit",
      "buildStep",
      "trainProgram",
      "fuseEntries",
      "planBuffers",
      "emitKernels",
      "assemblePlan",
    ];
    const at = order.map((name) => text.lastIndexOf(name));
    expect(at.every((i) => i >= 0)).toBe(true);
    // each phase after the one before it (analyze's phases are defined after compile's: by call)
    expect(at.slice(8)).toEqual([...at.slice(8)].sort((a, b) => a - b));
  });
});

describe("device limits a program can hit are diagnostics", () => {
  it("a kernel that needs more storage buffers than the device binds is E0602 naming the .lrk lines", async () => {
    const { compile, planStep } = await import("../compiler/compile.js");
    const { failureDiagnostic } = await import("../cli/failures.js");
    const { SourceFile } = await import("../language/source.js");
    const path = join(root, "examples", "mlp.lrk");
    const { compiled } = compile(new SourceFile(path, readFileSync(path, "utf8")));
    const program = compiled!.program;
    let thrown: unknown;
    try {
      planStep(program.step, {
        limits: {
          maxStorageBufferBindingSize: 2 ** 27,
          maxBufferSize: 2 ** 28,
          maxStorageBuffersPerShaderStage: 2,
        },
        features: [],
      });
    } catch (e) {
      thrown = e;
    }
    const d = failureDiagnostic(thrown, { program });
    expect(d?.code).toBe("E0602");
    expect(d?.message).toMatch(/storage buffers/);
    expect(d?.at?.file.path).toBe(path);
    expect(d?.notes.some((n) => /\.lrk:\d+/.test(n.message))).toBe(true);
  });
});
