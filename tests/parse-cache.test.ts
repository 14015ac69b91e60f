// The parse cache of std modules and user files (language/parse-cache.ts): a tree read back is the
// tree parsing gives, a changed text or a damaged file is parsed again, a cache that cannot be
// written changes nothing but speed, and a run whose files are all cached never builds the parser.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseCacheFolder, parseStdModule, parseUserFile } from "../language/parse-cache.js";
import { parse } from "../language/parse.js";
import { SourceFile } from "../language/source.js";
import { root } from "./helpers.js";

const stdModules = ["nn", "models", "adapters", "optim", "quant"];
const stdFile = (m: string) =>
  new SourceFile(`stdlib/${m}.lrk`, readFileSync(join(root, "stdlib", `${m}.lrk`), "utf8"));
/** The tree as JSON keeps it (undefined fields left out): what both paths must agree on. */
const plain = (x: unknown) => JSON.parse(JSON.stringify(x)) as unknown;

let saved: string | undefined;
beforeEach(() => {
  saved = process.env["XDG_CACHE_HOME"];
  process.env["XDG_CACHE_HOME"] = mkdtempSync(join(tmpdir(), "lrk-parse-cache-"));
});
afterEach(() => {
  if (saved === undefined) delete process.env["XDG_CACHE_HOME"];
  else process.env["XDG_CACHE_HOME"] = saved;
});

describe("parse cache of std modules", () => {
  it("reads back, for every std module, the tree that parsing gives", () => {
    for (const m of stdModules) {
      const file = stdFile(m);
      const first = parseStdModule(file, m); // parsed, and stored
      const second = parseStdModule(file, m); // read back
      expect(first.diagnostics).toEqual([]);
      expect(second.diagnostics).toEqual([]);
      expect(second.program).not.toBe(first.program);
      expect(plain(second.program)).toEqual(plain(parse(file).program));
    }
    const stored = readdirSync(parseCacheFolder()).map((f) =>
      f.replace(/-[0-9a-f]{32}\.json$/, ""),
    );
    expect(stored.sort()).toEqual([...stdModules].sort());
  });

  it("uses the stored tree, and only for the same text", () => {
    const file = stdFile("quant");
    parseStdModule(file, "quant");
    const [name] = readdirSync(parseCacheFolder());
    const path = join(parseCacheFolder(), name!);
    // a stored tree with one item less: what is read back is the file's, not a new parse
    // (the file: a header line with the tree's sha256, then the tree)
    const [headerLine, treeText] = readFileSync(path, "utf8").split("\n");
    const header = JSON.parse(headerLine!) as { sum: string };
    const tree = JSON.parse(treeText!) as { items: unknown[] };
    const items = tree.items.length;
    tree.items.pop();
    const shorter = JSON.stringify(tree);
    header.sum = createHash("sha256").update(shorter).digest("hex");
    writeFileSync(path, `${JSON.stringify(header)}\n${shorter}`);
    expect(parseStdModule(file, "quant").program.items.length).toBe(items - 1);
    // an edited module is parsed again
    const edited = new SourceFile(file.path, `${file.text}\nfn extra(x) = x\n`);
    expect(parseStdModule(edited, "quant").program.items.length).toBe(items + 1);
  });

  it("parses again over a damaged file, and keeps a few trees per module", () => {
    const file = stdFile("quant");
    parseStdModule(file, "quant");
    const [name] = readdirSync(parseCacheFolder());
    const path = join(parseCacheFolder(), name!);
    const whole = readFileSync(path, "utf8");
    writeFileSync(path, whole.slice(0, 40)); // cut short
    expect(plain(parseStdModule(file, "quant").program)).toEqual(plain(parse(file).program));
    // a flipped character inside the tree that leaves valid JSON (a name changed): the checksum
    const flipped = whole.replace(
      /"name":"([a-z])/,
      (_m, c: string) => `"name":"${c === "q" ? "r" : "q"}`,
    );
    expect(flipped).not.toBe(whole);
    writeFileSync(path, flipped);
    expect(plain(parseStdModule(file, "quant").program)).toEqual(plain(parse(file).program));
    for (let i = 0; i < 6; i++)
      parseStdModule(new SourceFile(file.path, `${file.text}\n// edit ${i}\n`), "quant");
    expect(readdirSync(parseCacheFolder()).length).toBe(4);
  });

  it("parses as usual where the cache folder cannot be written", (ctx) => {
    if (process.getuid?.() === 0) return ctx.skip("root writes anywhere");
    const base = process.env["XDG_CACHE_HOME"]!;
    chmodSync(base, 0o500);
    try {
      const file = stdFile("nn");
      expect(plain(parseStdModule(file, "nn").program)).toEqual(plain(parse(file).program));
    } finally {
      chmodSync(base, 0o700);
    }
  });

  it("parses as usual where the cache folder is a file", () => {
    const base = join(process.env["XDG_CACHE_HOME"]!, "file");
    writeFileSync(base, "not a folder");
    process.env["XDG_CACHE_HOME"] = base;
    const file = stdFile("nn");
    const r = parseStdModule(file, "nn");
    expect(r.diagnostics).toEqual([]);
    expect(plain(r.program)).toEqual(plain(parse(file).program));
  });
});

describe("parse cache of user files", () => {
  it("reads back the tree parsing gives; a file with a syntax error is not kept", () => {
    const text = readFileSync(join(root, "examples", "tiny_lm.lrk"), "utf8");
    const file = new SourceFile("models/tiny_lm.lrk", text);
    expect(plain(parseUserFile(file).program)).toEqual(plain(parse(file).program));
    expect(readdirSync(parseCacheFolder())).toEqual([
      expect.stringMatching(/^user-tiny_lm-[0-9a-f]{32}\.json$/),
    ]);
    expect(plain(parseUserFile(file).program)).toEqual(plain(parse(file).program));
    const broken = new SourceFile("broken.lrk", "model M( {");
    expect(parseUserFile(broken).diagnostics.length).toBeGreaterThan(0);
    expect(readdirSync(parseCacheFolder()).length).toBe(1);
  });

  it("a compile whose files are all cached never builds the parser or the lexer", () => {
    const dir = mkdtempSync(join(tmpdir(), "lrk-parse-cache-user-"));
    writeFileSync(join(dir, "tiny_lm.lrk"), readFileSync(join(root, "examples", "tiny_lm.lrk")));
    writeFileSync(
      join(dir, "main.lrk"),
      readFileSync(join(root, "examples", "lora_finetune.lrk"), "utf8"),
    );
    // a fresh process each time, as lrkc runs: the first parses (and stores), the second reads
    const script = `
      const { compile } = await import(${JSON.stringify(join(root, "dist/compiler/compile.js"))});
      const { SourceFile } = await import(${JSON.stringify(join(root, "dist/language/source.js"))});
      const { grammarBuilt } = await import(${JSON.stringify(join(root, "dist/language/cst-to-ast.js"))});
      const { lexerBuilt } = await import(${JSON.stringify(join(root, "dist/language/lexer.js"))});
      const { readFileSync } = await import("node:fs");
      const path = ${JSON.stringify(join(dir, "main.lrk"))};
      const { compiled } = compile(new SourceFile(path, readFileSync(path, "utf8")));
      console.log(JSON.stringify({ ok: compiled !== undefined, built: grammarBuilt(), lexed: lexerBuilt() }));`;
    const run = () => {
      const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
        encoding: "utf8",
        env: { ...process.env, VITEST: "" },
      });
      expect(r.stderr).toBe("");
      return JSON.parse(r.stdout) as { ok: boolean; built: boolean; lexed: boolean };
    };
    expect(run()).toEqual({ ok: true, built: true, lexed: true });
    expect(run()).toEqual({ ok: true, built: false, lexed: false });
  });
});
