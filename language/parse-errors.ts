// Syntax error messages in the user's terms: "expected `)` but found `with`", never Chevrotain's
// token-type names or its list of every path it tried.
import { EOF, type IParserErrorMessageProvider, type IToken, type TokenType } from "./chevrotain.js";

/** What each grammar rule is, said as the thing the user should have written. */
const ruleDescriptions: Record<string, string> = {
  program: "a declaration",
  topItem:
    "a declaration (`import`, `const`, `data`, `model`, `adapter`, `optimizer`, `quantizer`, `budget`, `train` or a function)",
  importDecl: "a module path or a file name",
  definition: "`model`, `adapter`, `optimizer`, `quantizer` or `budget`",
  onClause: "`(` or `:` after the `on` target",
  memberBlock: "a member",
  member:
    "a member (`param`, `state`, `let`, `const`, `if`, `regularize`, `at`, a submodule, or a function)",
  statement: "a statement",
  letDecl: "a name or `(a, b)` after `let`",
  trainItem:
    "a train setting (`model`, `data`, `init`, `loss`, `freeze`, `adapt`, `optimize`, `quantize`, `budget`, `steps`, `batch`, `schedule`, `seed`, `clip`, `eval`, `checkpoint` or `at`)",
  setting: "a train setting",
  rule: "`adapt`, `optimize` or `quantize`",
  atClause: "`step` or `every` after `at`",
  selectorList: "a selector",
  selector: "a selector",
  segment: "a selector component (a name, `*`, `**` or `{…}`)",
  segmentPart: "a selector component",
  indexRange: "an index or a range such as `0..4`",
  exprStmt: "a statement",
  expression: "an expression",
  unary: "an expression",
  postfix: "an expression",
  primary: "an expression",
  dim: "a dimension",
  indexItem: "an index or a slice",
  typeExpr: "a type",
  paramList: "a parameter",
  param: "a parameter",
};

export function describeToken(token: IToken): string {
  if (token.tokenType === EOF) return "the end of the file";
  const image = token.image.length > 24 ? token.image.slice(0, 21) + "…" : token.image;
  return `\`${image}\``;
}

function describeType(type: TokenType): string {
  return type.LABEL ?? type.name;
}

function oneOf(items: string[]): string {
  const unique = [...new Set(items)];
  if (unique.length <= 1) return unique[0] ?? "something else";
  if (unique.length > 6) return "something else";
  return unique.slice(0, -1).join(", ") + " or " + unique[unique.length - 1];
}

/** Where a list ends with a closing brace, what else could have come instead of the brace. */
const listItems: Record<string, string> = {
  memberBlock: "a member",
  block: "a statement",
  trainDecl: "a train setting",
};

export const errorMessages: IParserErrorMessageProvider = {
  buildMismatchTokenMessage({ expected, actual, ruleName }) {
    const item = listItems[ruleName];
    const what =
      expected === EOF
        ? ruleDescriptions["topItem"]
        : item && expected.name === "RCurly"
          ? `${item} or \`}\``
          : describeType(expected);
    return `expected ${what} but found ${describeToken(actual)}`;
  },
  buildNotAllInputParsedMessage({ firstRedundant }) {
    return `expected a declaration but found ${describeToken(firstRedundant)}`;
  },
  buildNoViableAltMessage({ expectedPathsPerAlt, actual, ruleName }) {
    const described = ruleDescriptions[ruleName];
    if (described) return `expected ${described} but found ${describeToken(actual[0]!)}`;
    const firsts = expectedPathsPerAlt.flatMap((paths) => paths.map((p) => describeType(p[0]!)));
    return `expected ${oneOf(firsts)} but found ${describeToken(actual[0]!)}`;
  },
  buildEarlyExitMessage({ expectedIterationPaths, actual, ruleName }) {
    const described = ruleDescriptions[ruleName];
    const firsts = expectedIterationPaths.map((p) => describeType(p[0]!));
    return `expected ${described ?? oneOf(firsts)} but found ${describeToken(actual[0]!)}`;
  },
};
