// One diagnostic record for every stage of lrkc, and its renderings: a terse-plus-frame form for
// people (`file:line:col: error[E0101]: message` and a code frame with a caret), and JSON for tools.
// Detection never formats; rendering never decides anything.
import type { SourceFile, Span } from "./source.js";
import { codeTitles, type DiagnosticCode } from "./codes.js";

export type Severity = "error" | "warning";

export interface Location {
  file: SourceFile;
  span: Span;
}

export interface Note {
  message: string;
  at?: Location;
}

export interface Diagnostic {
  code: DiagnosticCode;
  severity: Severity;
  /** What is wrong, in the user's terms. */
  message: string;
  /** The primary span; absent only for errors about no file in particular. */
  at?: Location;
  /** A short text printed under the caret. */
  label?: string;
  notes: Note[];
  /** How to fix it, where we know. */
  help?: string;
}

export function error(
  code: DiagnosticCode,
  message: string,
  at?: Location,
  extra: { label?: string; notes?: Note[]; help?: string } = {},
): Diagnostic {
  return {
    code,
    severity: "error",
    message,
    at,
    notes: extra.notes ?? [],
    label: extra.label,
    help: extra.help,
  };
}

export function hasErrors(list: readonly Diagnostic[]): boolean {
  return list.some((d) => d.severity === "error");
}

/** Sorted by file, then position; duplicates (same code and span) dropped. */
export function normalize(list: readonly Diagnostic[]): Diagnostic[] {
  const seen = new Set<string>();
  const out: Diagnostic[] = [];
  for (const d of list) {
    const key = `${d.code}|${d.at?.file.path}|${d.at?.span.start}|${d.at?.span.end}|${d.message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(d);
  }
  return out.sort(
    (a, b) =>
      (a.at?.file.path ?? "").localeCompare(b.at?.file.path ?? "") ||
      (a.at?.span.start ?? 0) - (b.at?.span.start ?? 0),
  );
}

export interface RenderOptions {
  color?: boolean;
}

const paint = (on: boolean, code: string, text: string) =>
  on ? `\x1b[${code}m${text}\x1b[0m` : text;

function header(d: Diagnostic, color: boolean): string {
  const where = d.at ? locationText(d.at) + ": " : "";
  const sev = paint(color, d.severity === "error" ? "1;31" : "1;33", `${d.severity}[${d.code}]`);
  return `${visible(where)}${sev}: ${paint(color, "1", visible(d.message))}`;
}

export function locationText(at: Location): string {
  const p = at.file.position(at.span.start);
  return `${at.file.path}:${p.line}:${p.column}`;
}

/** The lines of the span, each with carets under the part the span covers (at most 3 lines shown). */
function codeFrame(at: Location, label: string | undefined, color: boolean): string[] {
  const { file, span } = at;
  const start = file.position(span.start);
  const end = file.position(Math.max(span.start, span.end - 1));
  const lastLine = Math.min(end.line, start.line + 2);
  const gutterWidth = String(lastLine).length + 1;
  const pad = " ".repeat(gutterWidth);
  const lines: string[] = [`${pad} |`];
  for (let line = start.line; line <= lastLine; line++) {
    const raw = file.lineText(line);
    const { text, columns } = visibleLine(raw);
    lines.push(`${String(line).padStart(gutterWidth)} | ${text}`);
    // Carets go under the characters as shown, escapes included.
    const shown = (offset: number) => columns[Math.max(0, Math.min(offset, raw.length))]!;
    const from = line === start.line ? shown(start.column - 1) : leadingSpace(text);
    const to = line === end.line ? shown(end.column) : text.length;
    const width = Math.max(1, to - from);
    const carets = paint(color, "1;31", "^".repeat(width));
    const tail = line === lastLine && label ? " " + paint(color, "1;31", visible(label)) : "";
    lines.push(`${pad} | ${" ".repeat(Math.max(0, from))}${carets}${tail}`);
  }
  return lines;
}

// Characters a terminal does not show as themselves: C0 and C1 controls, bidirectional controls
// (U+202E and its kin reorder the line as displayed: the "Trojan source" attack), zero-width and
// other format characters, line and paragraph separators. Diagnostics show them as `\u{202E}`.
const invisible = /^[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]$/u;

function escaped(char: string): string {
  return `\\u{${char.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}}`;
}

/**
 * A source line as a code frame shows it: a tab as one space (so carets line up), invisible
 * characters escaped. `columns[i]` is where the line's UTF-16 offset `i` is shown.
 */
export function visibleLine(line: string): { text: string; columns: number[] } {
  const columns: number[] = [];
  let text = "";
  for (const char of line) {
    for (let unit = 0; unit < char.length; unit++) columns.push(text.length);
    text += char === "\t" ? " " : invisible.test(char) ? escaped(char) : char;
  }
  columns.push(text.length);
  return { text, columns };
}

/** A message, label, note or help with invisible characters escaped (line breaks kept). */
export function visible(text: string): string {
  let out = "";
  for (const char of text) out += char !== "\n" && invisible.test(char) ? escaped(char) : char;
  return out;
}

function leadingSpace(text: string): number {
  return text.length - text.trimStart().length;
}

export function renderDiagnostic(d: Diagnostic, options: RenderOptions = {}): string {
  const color = options.color ?? false;
  const out = [header(d, color)];
  if (d.at) out.push(...codeFrame(d.at, d.label, color));
  for (const note of d.notes) {
    const where = note.at ? ` (${locationText(note.at)})` : "";
    out.push(visible(`   = note: ${note.message}${where}`));
  }
  if (d.help) out.push(visible(`   = help: ${d.help}`));
  return out.join("\n");
}

export function renderDiagnostics(
  list: readonly Diagnostic[],
  options: RenderOptions = {},
): string {
  const errors = list.filter((d) => d.severity === "error").length;
  const body = list.map((d) => renderDiagnostic(d, options)).join("\n\n");
  const summary = errors > 0 ? `\n\n${errors} error${errors === 1 ? "" : "s"}` : "";
  return body + summary + "\n";
}

export interface JsonDiagnostic {
  code: string;
  title: string;
  severity: Severity;
  message: string;
  file?: string;
  line?: number;
  column?: number;
  endLine?: number;
  endColumn?: number;
  start?: number;
  end?: number;
  label?: string;
  notes: { message: string; file?: string; line?: number; column?: number }[];
  help?: string;
}

export function toJson(d: Diagnostic): JsonDiagnostic {
  const out: JsonDiagnostic = {
    code: d.code,
    title: codeTitles[d.code],
    severity: d.severity,
    message: d.message,
    notes: d.notes.map((n) => {
      const p = n.at?.file.position(n.at.span.start);
      return { message: n.message, file: n.at?.file.path, line: p?.line, column: p?.column };
    }),
  };
  if (d.at) {
    const s = d.at.file.position(d.at.span.start);
    const e = d.at.file.position(d.at.span.end);
    Object.assign(out, {
      file: d.at.file.path,
      line: s.line,
      column: s.column,
      endLine: e.line,
      endColumn: e.column,
      start: d.at.span.start,
      end: d.at.span.end,
    });
  }
  if (d.label) out.label = d.label;
  if (d.help) out.help = d.help;
  return out;
}

/**
 * The one diagnostics sink of a compilation (esbuild's `logger.Log`): every phase reports into
 * the log it is handed, and the driver asks it whether to go on. Reports keep their order.
 */
export class Log {
  readonly diagnostics: Diagnostic[] = [];

  add(...list: Diagnostic[]): void {
    this.diagnostics.push(...list);
  }

  error(
    code: DiagnosticCode,
    message: string,
    at?: Location,
    extra: { label?: string; notes?: Note[]; help?: string } = {},
  ): void {
    this.diagnostics.push(error(code, message, at, extra));
  }

  warning(
    code: DiagnosticCode,
    message: string,
    at?: Location,
    extra: { label?: string; notes?: Note[]; help?: string } = {},
  ): void {
    this.diagnostics.push({ ...error(code, message, at, extra), severity: "warning" });
  }

  hasErrors(): boolean {
    return hasErrors(this.diagnostics);
  }

  /** The reports so far, de-duplicated and in source order. */
  done(): Diagnostic[] {
    return normalize(this.diagnostics);
  }
}
