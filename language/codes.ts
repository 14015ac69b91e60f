// Every diagnostic code lrkc can emit, with a one-line title. Codes are stable: tests and tools
// match on them, never on message prose. spec/diagnostics.md documents each (a test checks it).
//
//   E00xx  files and command line
//   E01xx  lexical and syntax errors
//   E02xx  names, imports and definitions
//   E03xx  selectors and placement of rules
//   E04xx  types and shapes
//   E05xx  data, checkpoints and run configuration
//   E06xx  plans and devices
//
// Warnings have their own namespace, numbered like the errors of the same stage: W01xx syntax,
// W03xx placement. A warning never changes the exit code.

export const codeTitles = {
  E0001: "file cannot be read",
  E0002: "file is not valid text",
  E0003: "file cannot be written",
  E0101: "unexpected token",
  E0102: "unterminated string",
  E0103: "unterminated block comment",
  E0104: "nesting too deep",
  E0105: "unexpected character",
  E0106: "invalid number",
  E0107: "`**` is not an operator",
  E0108: "unknown escape in a string",
  E0201: "module not found",
  E0202: "name defined twice",
  E0203: "import cycle",
  E0204: "name not found",
  E0205: "wrong arguments",
  E0206: "wrong kind of value",
  E0207: "member not found",
  E0208: "train block incomplete",
  E0209: "no such train block",
  E0210: "definition refers to itself",
  E0211: "pooled state misused",
  E0301: "selector matches nothing",
  E0302: "rule cannot apply to this module",
  E0303: "optimizer cannot apply to this tensor",
  E0304: "rules in conflict",
  E0305: "trainable tensor without an optimizer",
  E0307: "budget over modules without the adapter",
  E0401: "shape mismatch",
  E0402: "type mismatch",
  E0410: "index outside a table",
  E0501: "data set cannot be used",
  E0502: "checkpoint cannot be used",
  E0503: "loss is not finite",
  E0504: "run folder cannot be written",
  E0505: "run folder holds another run",
  E0506: "cannot export",
  E0510: "index outside a table at run time",
  E0601: "no GPU adapter",
  E0602: "plan exceeds a device limit",
  E0603: "kernel rejected by the GPU driver",
  E0604: "program too large for this machine's memory",
  W0101: "statement has no effect",
  W0301: "rule has no effect",
  W0302: "rank larger than the matrix",
} as const;

export type DiagnosticCode = keyof typeof codeTitles;

export const allCodes = Object.keys(codeTitles) as DiagnosticCode[];
