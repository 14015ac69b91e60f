// Text to AST: lex, parse with recovery, build the AST. Never throws on any input: every problem
// becomes a diagnostic, and the AST is always returned (with Error nodes where recovery cut).
import { EOF, type IRecognitionException } from "./chevrotain.js";
import type * as A from "./ast.js";
import { AstBuilder, grammar, repairSpans } from "./cst-to-ast.js";
import { error, normalize, type Diagnostic } from "./diagnostics.js";
import { lex, type LrkToken } from "./lexer.js";
import type { SourceFile, Span } from "./source.js";
import { BlockComment, UnterminatedBlockComment } from "./tokens.js";

export interface ParseResult {
  program: A.Program;
  diagnostics: Diagnostic[];
}

export function parse(file: SourceFile): ParseResult {
  const whole: Span = { start: 0, end: file.text.length };
  const lexed = lex(file);
  const comments: A.Comment[] = lexed.comments.map((c) => ({
    kind: "Comment",
    text: c.image,
    block: c.tokenType === BlockComment || c.tokenType === UnterminatedBlockComment,
    span: { start: c.startOffset, end: c.endOffset! + 1 },
  }));
  const diagnostics = [...lexed.diagnostics];
  if (lexed.tooDeep) {
    return {
      program: { kind: "Program", items: [], comments, span: whole },
      diagnostics: normalize(diagnostics),
    };
  }

  const parser = grammar();
  parser.input = lexed.tokens;
  const cst = parser.program();
  // Recovery can fail several rules at the same token; the first error there is the real one.
  const reportedAt = new Set<number>();
  for (const e of parser.errors) {
    const d = syntaxDiagnostic(file, e, lexed.tokens);
    if (reportedAt.has(d.at!.span.start)) continue;
    reportedAt.add(d.at!.span.start);
    diagnostics.push(d);
  }

  const builder = new AstBuilder(file);
  const program = builder.visit(cst) as A.Program;
  program.comments = comments;
  repairSpans(program, whole);
  diagnostics.push(...builder.diagnostics);
  return { program, diagnostics: normalize(diagnostics) };
}

function syntaxDiagnostic(
  file: SourceFile,
  e: IRecognitionException,
  tokens: LrkToken[],
): Diagnostic {
  const token = e.token;
  let span: Span;
  if (token.tokenType === EOF || Number.isNaN(token.startOffset)) {
    // At the end of input: point just past the last token, where the missing text belongs.
    const last = tokens[tokens.length - 1];
    const end = last ? last.endOffset! + 1 : file.text.length;
    span = { start: end, end };
  } else {
    span = { start: token.startOffset, end: token.endOffset! + 1 };
  }
  return error("E0101", e.message, { file, span });
}
