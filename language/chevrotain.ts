// Chevrotain, loaded from its one-file build. The package's entry (lib/src/api.js) is hundreds of
// ES modules, its own and lodash-es's (one per function): resolving, reading and linking them cost
// about 0.3 s of CPU at every start of lrkc, a third of building a 12-layer model. The bundle
// (lib/chevrotain.mjs) is the same release's code in one file; the package's `exports` does not
// name it, so it is found beside the entry Node resolves, and the entry is the fallback. lrk's
// modules import chevrotain through this file only (tests/structure.test.ts checks), so there is
// one copy of its classes and token types.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

type Chevrotain = typeof import("chevrotain");

const entry = createRequire(import.meta.url).resolve("chevrotain"); // …/chevrotain/lib/src/api.js
const bundle = new URL("../chevrotain.mjs", pathToFileURL(entry));
const chevrotain = (await import(existsSync(bundle) ? bundle.href : "chevrotain")) as Chevrotain;

export const { CstParser, EOF, Lexer, createToken, tokenMatcher } = chevrotain;
export type {
  CstNode,
  IParserErrorMessageProvider,
  IRecognitionException,
  IToken,
  TokenType,
} from "chevrotain";
