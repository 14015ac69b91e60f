// Parsed .lrk files, kept on disk between runs. Every `lrkc build` or `train` of a program parses
// the std modules it imports (≈ 115 kB of .lrk: about 0.4 s of CPU in a fresh process, the
// largest part of the front end), while reading the same trees back as JSON takes ≈ 20 ms. A
// user's own files are kept too: a file that did not change since the last run (the imported
// model, a program built then trained) is read back, and when every file of a run is, the parser
// itself is never built (≈ 70 ms: language/cst-to-ast.ts builds it on first use).
//
// Safe because a tree is used only where it is exactly what parsing would give now:
// - the key is a hash of the file's text and of every file of this front end (this folder: the
//   lexer, the grammar, the AST builder), so an edited file or parser never meets an old tree;
// - a tree is stored only when parsing found no problem and its JSON reads back deep-equal to it
//   (no non-finite numbers, plain objects and arrays only; a field whose value is undefined, which
//   JSON leaves out, counts as absent: the compiler reads AST fields and walks their values, and a
//   walk skips undefined);
// - a file that cannot be read, is cut short or holds another key is ignored (parsed again and
//   rewritten); files are written through a temporary file and a rename, so a reader never sees
//   half of one. Nothing fails for want of a cache: a folder that cannot be made or written just
//   means parsing every time.
// Where: `$XDG_CACHE_HOME/lrk/parsed/` (default `~/.cache/lrk/parsed/`), a few files per std
// module or user file name (`user-NAME-…` for NAME.lrk); deleting it is always safe.
import { createHash } from "node:crypto";
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type * as A from "./ast.js";
import { lrkCacheFolder } from "./cache-folder.js";
import { parse, type ParseResult } from "./parse.js";
import type { SourceFile } from "./source.js";

/**
 * The stored file's layout; a change of it changes every key. A file is one line of JSON (the
 * header: format, key, and the sha256 of the rest of the file), then the tree as JSON: the sum
 * is checked on the text as read, without writing the tree out again.
 */
const FORMAT = 3;
/** Trees kept per module name (older ones are removed when a new one is written). */
const KEPT_PER_MODULE = 4;

interface Header {
  format: number;
  key: string;
  /** sha256 of the tree's JSON text: a flipped bit inside the tree is caught too. */
  sum: string;
}

function checksum(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

let frontEndHash: string | undefined;

/** A hash of every file of the front end (this folder), computed once per process. */
function frontEnd(): string {
  if (frontEndHash === undefined) {
    const dir = dirname(fileURLToPath(import.meta.url));
    const hash = createHash("sha256").update(`format ${FORMAT}\n`);
    for (const name of readdirSync(dir).sort())
      if (/\.(js|ts)$/.test(name)) hash.update(`${name}\n`).update(readFileSync(join(dir, name)));
    frontEndHash = hash.digest("hex");
  }
  return frontEndHash;
}

export function parseCacheFolder(): string {
  return join(lrkCacheFolder(), "parsed");
}

/**
 * `parse(file)` for a standard-library module, read from the cache when this text was parsed
 * before by this front end. `module` names the file in the cache (`nn` for std.nn).
 */
export function parseStdModule(file: SourceFile, module: string): ParseResult {
  return parseCached(file, module);
}

/**
 * `parse(file)` for a user's file, read from the cache when this text was parsed before by this
 * front end. Files of one name (in any folder) share their few places in the cache.
 */
export function parseUserFile(file: SourceFile): ParseResult {
  return parseCached(file, `user-${basename(file.path).replace(/\.lrk$/, "")}`);
}

/** `parse(file)`, or the tree stored under `name` for this text and front end. */
function parseCached(file: SourceFile, name: string): ParseResult {
  const folder = parseCacheFolder();
  const safeName = name.replace(/[^A-Za-z0-9_-]/g, "_");
  const key = createHash("sha256").update(frontEnd()).update("\n").update(file.text).digest("hex");
  const path = join(folder, `${safeName}-${key.slice(0, 32)}.json`);
  try {
    const text = readFileSync(path, "utf8");
    const end = text.indexOf("\n");
    const header = JSON.parse(text.slice(0, end)) as Header;
    const tree = text.slice(end + 1);
    if (header.format === FORMAT && header.key === key && header.sum === checksum(tree))
      return { program: JSON.parse(tree) as A.Program, diagnostics: [] };
  } catch {
    // no tree yet, or one that cannot be used: parse
  }
  const parsed = parse(file);
  if (parsed.diagnostics.length === 0) store(folder, path, safeName, key, parsed.program);
  return parsed;
}

/** Writes a tree that reads back exactly; any failure leaves the cache as it was. */
function store(folder: string, path: string, module: string, key: string, program: A.Program) {
  try {
    const tree = JSON.stringify(program);
    if (!sameTree(JSON.parse(tree), program)) return;
    const header: Header = { format: FORMAT, key, sum: checksum(tree) };
    const json = `${JSON.stringify(header)}\n${tree}`;
    mkdirSync(folder, { recursive: true });
    const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
    writeFileSync(tmp, json, { flag: "wx" });
    try {
      renameSync(tmp, path);
    } catch (e) {
      unlinkSync(tmp);
      throw e;
    }
    prune(folder, module, basename(path));
  } catch {
    // a read-only or full cache folder: parsing every time is only slower
  }
}

/** Removes all but the newest few trees of `module` (older std sources or front ends). */
function prune(folder: string, module: string, keep: string): void {
  const ofModule = new RegExp(`^${module}-[0-9a-f]{32}\\.json$`); // module: [A-Za-z0-9_-] only
  const mine = readdirSync(folder)
    .filter((f) => f !== keep && ofModule.test(f))
    .map((f) => ({ f, t: statSync(join(folder, f)).mtimeMs }))
    .sort((a, b) => b.t - a.t);
  for (const { f } of mine.slice(KEPT_PER_MODULE - 1)) unlinkSync(join(folder, f));
}

/**
 * Does `read` (a tree read back from JSON) hold exactly what `made` does? Plain objects and arrays
 * only, numbers by Object.is (NaN, −0 and infinities do not survive JSON), and a field of `made`
 * whose value is undefined counts as absent.
 */
function sameTree(read: unknown, made: unknown): boolean {
  if (typeof made !== "object" || made === null) return Object.is(read, made);
  if (typeof read !== "object" || read === null) return false;
  if (Array.isArray(made)) {
    if (!Array.isArray(read) || read.length !== made.length) return false;
    for (let i = 0; i < made.length; i++) if (!sameTree(read[i], made[i])) return false;
    return true;
  }
  if (Object.getPrototypeOf(made) !== Object.prototype || Array.isArray(read)) return false;
  const r = read as Record<string, unknown>;
  const m = made as Record<string, unknown>;
  let fields = 0;
  for (const key of Object.keys(m)) {
    if (m[key] === undefined) continue;
    fields++;
    if (!Object.hasOwn(r, key) || !sameTree(r[key], m[key])) return false;
  }
  return Object.keys(r).length === fields;
}
