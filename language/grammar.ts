// The grammar of .lrk as a Chevrotain CST parser: pure grammar, no semantics. The CST is turned
// into the AST by cst-to-ast.ts; spec/language.md is the prose reference for every rule here.
//
// Newlines: the lexer marks tokens that start a line outside () and []. A binary operator, a call
// `(` or an index `[` on such a token does not continue the expression before it, so statements
// need no separators while expressions still wrap freely inside brackets (or after an operator).
import { CstParser, EOF, tokenMatcher, type IToken, type TokenType } from "./chevrotain.js";
import * as t from "./tokens.js";
import type { LrkToken } from "./lexer.js";
import { errorMessages } from "./parse-errors.js";

const binaryOperators = [
  t.Or,
  t.And,
  t.EqEq,
  t.NotEq,
  t.LtEq,
  t.GtEq,
  t.Lt,
  t.Gt,
  t.Plus,
  t.Minus,
  t.Star,
  t.Slash,
  t.Percent,
  t.AtSign,
  t.Caret,
  t.DoubleStar, // not an operator: parsed so the AST builder can say "use ^"
];
const settingKeywords = [
  t.Model,
  t.Data,
  t.Init,
  t.InitAdapters,
  t.InitRename,
  t.Loss,
  t.Steps,
  t.Batch,
  t.Schedule,
  t.Seed,
  t.Clip,
  t.FrozenStorage,
];
const selectorTerminators = [t.With, t.By, t.Where];
const assignOperators = [t.Equals, t.PlusAssign, t.MinusAssign, t.StarAssign, t.SlashAssign];

export class LrkGrammar extends CstParser {
  constructor() {
    super(t.allTokens, {
      recoveryEnabled: true,
      maxLookahead: 3,
      errorMessageProvider: errorMessages,
      // The grammar's own checks (ambiguity, left recursion) cost a sixth of lrkc's start-up and
      // find nothing new in a grammar that does not change between runs: the tests run them.
      skipValidations: !process.env["VITEST"],
    });
    this.performSelfAnalysis();
  }

  /**
   * Recovery skips to a token that can follow a rule on the stack. Top-level functions made a
   * name a possible start of a declaration, so after an error inside a definition a name there
   * (`Linear(d d)`, a member `forward(x) = …`) would end the whole definition: a name counts as a
   * resync point only at the start of an unindented line, where top-level declarations are.
   */
  findReSyncTokenType(): TokenType {
    const follows = (this as unknown as { flattenFollowSet(): TokenType[] }).flattenFollowSet();
    for (let k = 1; ; k++) {
      const token = this.LA(k) as LrkToken;
      const found = follows.find((type) => tokenMatcher(token, type));
      if (found === undefined) continue;
      if (found === t.Identifier && !(token.startsLine === true && token.startColumn === 1))
        continue;
      return found;
    }
  }

  private startsLine(): boolean {
    return (this.LA(1) as LrkToken).startsLine === true;
  }

  private is(type: TokenType, k = 1): boolean {
    return this.LA(k).tokenType === type;
  }

  // ------------------------------------------------------------------------ top level

  program = this.RULE("program", () => {
    this.MANY(() =>
      this.OR([
        { ALT: () => this.SUBRULE(this.topItem) },
        { ALT: () => this.CONSUME(t.Semicolon) },
      ]),
    );
  });

  topItem = this.RULE("topItem", () => {
    this.OR([
      { ALT: () => this.SUBRULE(this.importDecl) },
      { ALT: () => this.SUBRULE(this.constDecl) },
      { ALT: () => this.SUBRULE(this.dataDecl) },
      { ALT: () => this.SUBRULE(this.definition) },
      { ALT: () => this.SUBRULE(this.trainDecl) },
      // a top-level function, `NAME(PARAMS) = EXPR` or with a block (spec §3.4)
      {
        // only `NAME(` at the start of a line: elsewhere an identifier is not a declaration, so
        // recovery from an error inside a definition does not stop at one
        GATE: () =>
          tokenMatcher(this.LA(1), t.Identifier) && this.is(t.LParen, 2) && this.startsLine(),
        ALT: () => this.SUBRULE(this.functionDef),
      },
    ]);
  });

  importDecl = this.RULE("importDecl", () => {
    this.CONSUME(t.Import);
    this.OR([
      { ALT: () => this.CONSUME(t.StringLiteral, { LABEL: "file" }) },
      {
        ALT: () => {
          this.CONSUME(t.Identifier, { LABEL: "part" });
          this.MANY({
            GATE: () => !this.is(t.LCurly, 2),
            DEF: () => {
              this.CONSUME(t.Dot);
              this.CONSUME2(t.Identifier, { LABEL: "part" });
            },
          });
        },
      },
    ]);
    this.OR2([
      {
        ALT: () => {
          this.CONSUME2(t.Dot);
          this.CONSUME(t.LCurly);
          this.SUBRULE(this.importItem);
          this.MANY2({
            GATE: () => !this.is(t.RCurly, 2),
            DEF: () => {
              this.CONSUME(t.Comma);
              this.SUBRULE2(this.importItem);
            },
          });
          this.OPTION(() => this.CONSUME2(t.Comma));
          this.CONSUME(t.RCurly);
        },
      },
      {
        ALT: () => {
          this.CONSUME(t.As);
          this.CONSUME3(t.Identifier, { LABEL: "alias" });
        },
      },
      { ALT: () => {} },
    ]);
  });

  importItem = this.RULE("importItem", () => {
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.OPTION(() => {
      this.CONSUME(t.As);
      this.CONSUME2(t.Identifier, { LABEL: "alias" });
    });
  });

  constDecl = this.RULE("constDecl", () => {
    this.CONSUME(t.Const);
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.OPTION(() => {
      this.CONSUME(t.Colon);
      this.SUBRULE(this.typeExpr);
    });
    this.CONSUME(t.Equals);
    this.SUBRULE(this.expression);
  });

  dataDecl = this.RULE("dataDecl", () => {
    this.CONSUME(t.Data);
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.CONSUME(t.Equals);
    this.SUBRULE(this.expression);
  });

  definition = this.RULE("definition", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.Model, { LABEL: "sort" }) },
      { ALT: () => this.CONSUME(t.Adapter, { LABEL: "sort" }) },
      { ALT: () => this.CONSUME(t.Optimizer, { LABEL: "sort" }) },
      { ALT: () => this.CONSUME(t.Quantizer, { LABEL: "sort" }) },
      { ALT: () => this.CONSUME(t.Budget, { LABEL: "sort" }) },
    ]);
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.OPTION(() => this.SUBRULE(this.paramList));
    this.OPTION2(() => this.SUBRULE(this.onClause));
    this.SUBRULE(this.memberBlock);
  });

  onClause = this.RULE("onClause", () => {
    this.CONSUME(t.On);
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.OPTION(() =>
      this.OR([
        {
          ALT: () => {
            this.CONSUME(t.LParen);
            this.OPTION2(() => {
              this.CONSUME2(t.Identifier, { LABEL: "arg" });
              this.MANY(() => {
                this.CONSUME(t.Comma);
                this.CONSUME3(t.Identifier, { LABEL: "arg" });
              });
            });
            this.CONSUME(t.RParen);
          },
        },
        {
          ALT: () => {
            this.CONSUME(t.Colon);
            this.SUBRULE(this.typeExpr);
          },
        },
      ]),
    );
    // `on Linear(in, out) or Conv1D(in, out)`: an adapter written for several layer types
    this.MANY2(() => {
      this.CONSUME(t.Or);
      this.SUBRULE(this.onAlternative, { LABEL: "alternative" });
    });
  });

  onAlternative = this.RULE("onAlternative", () => {
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.CONSUME(t.LParen);
    this.OPTION(() => {
      this.CONSUME2(t.Identifier, { LABEL: "arg" });
      this.MANY(() => {
        this.CONSUME(t.Comma);
        this.CONSUME3(t.Identifier, { LABEL: "arg" });
      });
    });
    this.CONSUME(t.RParen);
  });

  paramList = this.RULE("paramList", () => {
    this.CONSUME(t.LParen);
    this.OPTION(() => {
      this.SUBRULE(this.param);
      this.MANY({
        GATE: () => !this.is(t.RParen, 2),
        DEF: () => {
          this.CONSUME(t.Comma);
          this.SUBRULE2(this.param);
        },
      });
      this.OPTION2(() => this.CONSUME2(t.Comma));
    });
    this.CONSUME(t.RParen);
  });

  param = this.RULE("param", () => {
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.OPTION(() => {
      this.CONSUME(t.Colon);
      this.SUBRULE(this.typeExpr);
    });
    this.OPTION2(() => {
      this.CONSUME(t.Equals);
      this.SUBRULE(this.expression);
    });
  });

  typeExpr = this.RULE("typeExpr", () => {
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.OPTION(() => {
      this.CONSUME(t.LBracket);
      this.SUBRULE(this.dim);
      this.MANY({
        GATE: () => !this.is(t.RBracket, 2),
        DEF: () => {
          this.CONSUME(t.Comma);
          this.SUBRULE2(this.dim);
        },
      });
      this.OPTION2(() => this.CONSUME2(t.Comma));
      this.CONSUME(t.RBracket);
    });
  });

  dim = this.RULE("dim", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.Ellipsis) },
      { ALT: () => this.SUBRULE(this.expression) },
    ]);
  });

  // ------------------------------------------------------------------------ members

  memberBlock = this.RULE("memberBlock", () => {
    this.CONSUME(t.LCurly);
    this.MANY(() =>
      this.OR([{ ALT: () => this.SUBRULE(this.member) }, { ALT: () => this.CONSUME(t.Semicolon) }]),
    );
    this.CONSUME(t.RCurly);
  });

  member = this.RULE("member", () => {
    this.OR([
      // A soft keyword at the start of a member is the keyword: these come first and win.
      { ALT: () => this.SUBRULE(this.paramMember), IGNORE_AMBIGUITIES: true },
      { ALT: () => this.SUBRULE(this.stateMember), IGNORE_AMBIGUITIES: true },
      { ALT: () => this.SUBRULE(this.regularize), IGNORE_AMBIGUITIES: true },
      { ALT: () => this.SUBRULE(this.atClause), IGNORE_AMBIGUITIES: true },
      { ALT: () => this.SUBRULE(this.letDecl) },
      { ALT: () => this.SUBRULE(this.ifMember) },
      { ALT: () => this.SUBRULE(this.repeat) },
      { ALT: () => this.SUBRULE(this.functionDef) },
      { ALT: () => this.SUBRULE(this.define) },
    ]);
  });

  paramMember = this.RULE("paramMember", () => {
    this.CONSUME(t.Param);
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.CONSUME(t.Colon);
    this.SUBRULE(this.typeExpr);
    this.OPTION(() => {
      this.CONSUME(t.Equals);
      this.SUBRULE(this.expression);
    });
  });

  stateMember = this.RULE("stateMember", () => {
    this.CONSUME(t.State);
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.OPTION(() => {
      this.CONSUME(t.Colon);
      this.SUBRULE(this.typeExpr);
    });
    this.CONSUME(t.Equals);
    this.SUBRULE(this.expression, { LABEL: "init" });
    this.OPTION2(() => {
      this.CONSUME(t.Refresh);
      this.CONSUME(t.Every);
      this.SUBRULE2(this.expression, { LABEL: "every" });
    });
  });

  ifMember = this.RULE("ifMember", () => {
    this.CONSUME(t.If);
    this.SUBRULE(this.expression);
    this.SUBRULE(this.memberBlock, { LABEL: "then" });
    this.OPTION(() => {
      this.CONSUME(t.Else);
      this.OR([
        { ALT: () => this.SUBRULE(this.ifMember, { LABEL: "elseIf" }) },
        { ALT: () => this.SUBRULE2(this.memberBlock, { LABEL: "else" }) },
      ]);
    });
  });

  regularize = this.RULE("regularize", () => {
    this.CONSUME(t.Regularize);
    this.SUBRULE(this.expression);
  });

  atClause = this.RULE("atClause", () => {
    this.CONSUME(t.At);
    this.OR([
      { ALT: () => this.CONSUME(t.Step, { LABEL: "trigger" }) },
      { ALT: () => this.CONSUME(t.Every, { LABEL: "trigger" }) },
    ]);
    this.SUBRULE(this.expression);
    this.SUBRULE(this.block);
  });

  repeat = this.RULE("repeat", () => {
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.CONSUME(t.LBracket);
    this.SUBRULE(this.expression);
    this.CONSUME(t.RBracket);
    this.SUBRULE(this.memberBlock);
  });

  functionDef = this.RULE("functionDef", () => {
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.SUBRULE(this.paramList);
    this.OPTION(() => {
      this.CONSUME(t.Arrow);
      this.SUBRULE(this.typeExpr);
    });
    this.OR([
      {
        ALT: () => {
          this.CONSUME(t.Equals);
          this.SUBRULE(this.expression);
        },
      },
      { ALT: () => this.SUBRULE(this.block) },
    ]);
  });

  define = this.RULE("define", () => {
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.CONSUME(t.Equals);
    this.SUBRULE(this.expression);
  });

  // ------------------------------------------------------------------------ statements

  block = this.RULE("block", () => {
    this.CONSUME(t.LCurly);
    this.MANY(() =>
      this.OR([
        { ALT: () => this.SUBRULE(this.statement) },
        { ALT: () => this.CONSUME(t.Semicolon) },
      ]),
    );
    this.CONSUME(t.RCurly);
  });

  statement = this.RULE("statement", () => {
    this.OR([
      { ALT: () => this.SUBRULE(this.letDecl) },
      { ALT: () => this.SUBRULE(this.forStmt) },
      { ALT: () => this.SUBRULE(this.ifStmt) },
      { ALT: () => this.SUBRULE(this.returnStmt) },
      { ALT: () => this.SUBRULE(this.exprStmt) },
    ]);
  });

  letDecl = this.RULE("letDecl", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.Let, { LABEL: "keyword" }) },
      { ALT: () => this.CONSUME(t.Const, { LABEL: "keyword" }) },
    ]);
    this.OR2([
      { ALT: () => this.CONSUME(t.Identifier, { LABEL: "name" }) },
      {
        ALT: () => {
          this.CONSUME(t.LParen);
          this.CONSUME2(t.Identifier, { LABEL: "name" });
          this.MANY(() => {
            this.CONSUME(t.Comma);
            this.CONSUME3(t.Identifier, { LABEL: "name" });
          });
          this.CONSUME(t.RParen);
        },
      },
    ]);
    this.OPTION(() => {
      this.CONSUME(t.Colon);
      this.SUBRULE(this.typeExpr);
    });
    this.CONSUME(t.Equals);
    this.SUBRULE(this.expression);
  });

  forStmt = this.RULE("forStmt", () => {
    this.CONSUME(t.For);
    this.CONSUME(t.Identifier, { LABEL: "variable" });
    this.CONSUME(t.In);
    this.SUBRULE(this.expression);
    this.SUBRULE(this.block);
  });

  ifStmt = this.RULE("ifStmt", () => {
    this.CONSUME(t.If);
    this.SUBRULE(this.expression);
    this.SUBRULE(this.block, { LABEL: "then" });
    this.OPTION(() => {
      this.CONSUME(t.Else);
      this.OR([
        { ALT: () => this.SUBRULE(this.ifStmt, { LABEL: "elseIf" }) },
        { ALT: () => this.SUBRULE2(this.block, { LABEL: "else" }) },
      ]);
    });
  });

  returnStmt = this.RULE("returnStmt", () => {
    this.CONSUME(t.Return);
    this.OPTION({ GATE: () => !this.startsLine(), DEF: () => this.SUBRULE(this.expression) });
  });

  exprStmt = this.RULE("exprStmt", () => {
    this.SUBRULE(this.expression, { LABEL: "target" });
    this.OPTION(() => {
      this.OR(assignOperators.map((op) => ({ ALT: () => this.CONSUME(op, { LABEL: "op" }) })));
      this.SUBRULE2(this.expression, { LABEL: "value" });
    });
  });

  // ------------------------------------------------------------------------ train blocks

  trainDecl = this.RULE("trainDecl", () => {
    this.CONSUME(t.Train);
    this.CONSUME(t.Identifier, { LABEL: "name" });
    this.CONSUME(t.LCurly);
    this.MANY(() =>
      this.OR([
        { ALT: () => this.SUBRULE(this.trainItem) },
        { ALT: () => this.CONSUME(t.Semicolon) },
      ]),
    );
    this.CONSUME(t.RCurly);
  });

  trainItem = this.RULE("trainItem", () => {
    this.OR([
      { ALT: () => this.SUBRULE(this.setting) },
      { ALT: () => this.SUBRULE(this.freeze) },
      { ALT: () => this.SUBRULE(this.rule) },
      { ALT: () => this.SUBRULE(this.budgetRule) },
      { ALT: () => this.SUBRULE(this.evalItem) },
      { ALT: () => this.SUBRULE(this.checkpointItem) },
      { ALT: () => this.SUBRULE(this.atClause) },
    ]);
  });

  setting = this.RULE("setting", () => {
    this.OR(settingKeywords.map((k) => ({ ALT: () => this.CONSUME(k, { LABEL: "key" }) })));
    this.SUBRULE(this.expression);
  });

  freeze = this.RULE("freeze", () => {
    this.CONSUME(t.Freeze);
    this.SUBRULE(this.selectorList);
  });

  rule = this.RULE("rule", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.Adapt, { LABEL: "verb" }) },
      { ALT: () => this.CONSUME(t.Optimize, { LABEL: "verb" }) },
      { ALT: () => this.CONSUME(t.Quantize, { LABEL: "verb" }) },
    ]);
    this.SUBRULE(this.selectorList);
    this.CONSUME(t.With);
    this.SUBRULE(this.expression);
  });

  budgetRule = this.RULE("budgetRule", () => {
    this.CONSUME(t.Budget);
    this.CONSUME(t.Identifier, { LABEL: "resource" });
    this.SUBRULE(this.expression, { LABEL: "total" });
    this.CONSUME(t.Over);
    this.SUBRULE(this.selectorList);
    this.CONSUME(t.By);
    this.SUBRULE2(this.expression, { LABEL: "controller" });
  });

  evalItem = this.RULE("evalItem", () => {
    this.CONSUME(t.Eval);
    this.CONSUME(t.Every);
    this.SUBRULE(this.expression, { LABEL: "every" });
    this.OPTION(() => {
      this.CONSUME(t.On);
      this.SUBRULE2(this.expression, { LABEL: "on" });
    });
  });

  checkpointItem = this.RULE("checkpointItem", () => {
    this.CONSUME(t.Checkpoint);
    this.CONSUME(t.Every);
    this.SUBRULE(this.expression);
  });

  // ------------------------------------------------------------------------ selectors

  selectorList = this.RULE("selectorList", () => {
    this.SUBRULE(this.selector);
    this.MANY(() => {
      this.CONSUME(t.Comma);
      this.SUBRULE2(this.selector);
    });
    this.OPTION(() => {
      this.CONSUME(t.Where);
      this.SUBRULE(this.expression);
    });
  });

  selector = this.RULE("selector", () => {
    this.SUBRULE(this.segment);
    this.MANY(() => {
      this.CONSUME(t.Dot);
      this.SUBRULE2(this.segment);
    });
  });

  segment = this.RULE("segment", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.DoubleStar) },
      {
        ALT: () => {
          this.CONSUME(t.LCurly);
          this.SUBRULE(this.selector);
          this.MANY({
            GATE: () => !this.is(t.RCurly, 2),
            DEF: () => {
              this.CONSUME(t.Comma);
              this.SUBRULE2(this.selector);
            },
          });
          this.OPTION(() => this.CONSUME2(t.Comma));
          this.CONSUME(t.RCurly);
        },
      },
      {
        // `with`, `by` and `where` end a selector; as a component they would only hide a typo.
        GATE: () => !selectorTerminators.includes(this.LA(1).tokenType),
        ALT: () => {
          this.SUBRULE(this.segmentPart);
          // `*_proj` is one component: further parts only when written without a space.
          this.MANY2({
            GATE: () => this.adjacentToPrevious(),
            DEF: () => this.SUBRULE2(this.segmentPart),
          });
          this.OPTION2(() => {
            this.CONSUME(t.LBracket);
            this.SUBRULE(this.indexRange);
            this.MANY3(() => {
              this.CONSUME3(t.Comma);
              this.SUBRULE2(this.indexRange);
            });
            this.CONSUME(t.RBracket);
          });
        },
      },
    ]);
  });

  private adjacentToPrevious(): boolean {
    const prev = this.LA(0) as IToken | undefined;
    const next = this.LA(1);
    return (
      prev !== undefined && prev.endOffset !== undefined && next.startOffset === prev.endOffset + 1
    );
  }

  segmentPart = this.RULE("segmentPart", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.Identifier) },
      { ALT: () => this.CONSUME(t.Star) },
      { ALT: () => this.CONSUME(t.IntLiteral) },
    ]);
  });

  indexRange = this.RULE("indexRange", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.Star) },
      {
        ALT: () => {
          this.CONSUME(t.IntLiteral, { LABEL: "start" });
          this.OPTION(() => {
            this.OR2([
              { ALT: () => this.CONSUME(t.DotDot, { LABEL: "range" }) },
              { ALT: () => this.CONSUME(t.DotDotEq, { LABEL: "range" }) },
            ]);
            this.OPTION2(() => this.CONSUME2(t.IntLiteral, { LABEL: "end" }));
          });
        },
      },
      {
        ALT: () => {
          this.OR3([
            { ALT: () => this.CONSUME2(t.DotDot, { LABEL: "range" }) },
            { ALT: () => this.CONSUME2(t.DotDotEq, { LABEL: "range" }) },
          ]);
          this.CONSUME3(t.IntLiteral, { LABEL: "end" });
        },
      },
    ]);
  });

  // ------------------------------------------------------------------------ expressions

  /** A flat chain `unary (op unary)*`; precedence is applied when building the AST. */
  expression = this.RULE("expression", () => {
    this.SUBRULE(this.unary);
    this.MANY({
      GATE: () => !this.startsLine(),
      DEF: () => {
        this.OR(
          binaryOperators.map((op) => ({ ALT: () => this.CONSUME(op, { LABEL: "operator" }) })),
        );
        this.SUBRULE2(this.unary);
      },
    });
  });

  unary = this.RULE("unary", () => {
    this.MANY(() =>
      this.OR([
        { ALT: () => this.CONSUME(t.Minus, { LABEL: "prefix" }) },
        { ALT: () => this.CONSUME(t.Plus, { LABEL: "prefix" }) },
        { ALT: () => this.CONSUME(t.Not, { LABEL: "prefix" }) },
      ]),
    );
    this.SUBRULE(this.postfix);
  });

  postfix = this.RULE("postfix", () => {
    this.SUBRULE(this.primary);
    this.MANY({
      GATE: () => this.is(t.Dot) || this.is(t.Transpose) || !this.startsLine(),
      DEF: () =>
        this.OR([
          { ALT: () => this.SUBRULE(this.memberAccess, { LABEL: "suffix" }) },
          { ALT: () => this.SUBRULE(this.callArgs, { LABEL: "suffix" }) },
          { ALT: () => this.SUBRULE(this.indexArgs, { LABEL: "suffix" }) },
          { ALT: () => this.CONSUME(t.Transpose, { LABEL: "suffix" }) },
        ]),
    });
  });

  memberAccess = this.RULE("memberAccess", () => {
    this.CONSUME(t.Dot);
    this.CONSUME(t.Identifier, { LABEL: "name" });
  });

  callArgs = this.RULE("callArgs", () => {
    this.CONSUME(t.LParen);
    this.OPTION(() => {
      this.SUBRULE(this.arg);
      this.MANY({
        GATE: () => !this.is(t.RParen, 2),
        DEF: () => {
          this.CONSUME(t.Comma);
          this.SUBRULE2(this.arg);
        },
      });
      this.OPTION2(() => this.CONSUME2(t.Comma));
    });
    this.CONSUME(t.RParen);
  });

  arg = this.RULE("arg", () => {
    this.OPTION(() => {
      this.CONSUME(t.Identifier, { LABEL: "name" });
      this.CONSUME(t.Colon);
    });
    this.SUBRULE(this.expression);
  });

  indexArgs = this.RULE("indexArgs", () => {
    this.CONSUME(t.LBracket);
    this.SUBRULE(this.indexItem);
    this.MANY({
      GATE: () => !this.is(t.RBracket, 2),
      DEF: () => {
        this.CONSUME(t.Comma);
        this.SUBRULE2(this.indexItem);
      },
    });
    this.OPTION(() => this.CONSUME2(t.Comma));
    this.CONSUME(t.RBracket);
  });

  /** `i`, `...`, and slices `a:b:c` with any part left out. */
  indexItem = this.RULE("indexItem", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.Ellipsis) },
      {
        ALT: () => {
          this.SUBRULE(this.expression, { LABEL: "start" });
          this.OPTION(() => this.SUBRULE(this.sliceTail));
        },
      },
      { ALT: () => this.SUBRULE2(this.sliceTail) },
    ]);
  });

  sliceTail = this.RULE("sliceTail", () => {
    this.CONSUME(t.Colon, { LABEL: "colon" });
    this.OPTION(() => this.SUBRULE(this.expression, { LABEL: "stop" }));
    this.OPTION2(() => {
      this.CONSUME2(t.Colon, { LABEL: "colon" });
      this.OPTION3(() => this.SUBRULE2(this.expression, { LABEL: "step" }));
    });
  });

  primary = this.RULE("primary", () => {
    this.OR([
      { ALT: () => this.CONSUME(t.NumberLiteral, { LABEL: "literal" }) },
      { ALT: () => this.CONSUME(t.StringLiteral, { LABEL: "literal" }) },
      { ALT: () => this.CONSUME(t.True, { LABEL: "literal" }) },
      { ALT: () => this.CONSUME(t.False, { LABEL: "literal" }) },
      { ALT: () => this.CONSUME(t.Identifier, { LABEL: "name" }) },
      { ALT: () => this.SUBRULE(this.parenExpr) },
      { ALT: () => this.SUBRULE(this.listExpr) },
    ]);
  });

  parenExpr = this.RULE("parenExpr", () => {
    this.CONSUME(t.LParen);
    this.SUBRULE(this.expression);
    this.MANY({
      GATE: () => !this.is(t.RParen, 2),
      DEF: () => {
        this.CONSUME(t.Comma, { LABEL: "comma" });
        this.SUBRULE2(this.expression);
      },
    });
    this.OPTION(() => this.CONSUME2(t.Comma, { LABEL: "comma" }));
    this.CONSUME(t.RParen);
  });

  listExpr = this.RULE("listExpr", () => {
    this.CONSUME(t.LBracket);
    this.OPTION(() => {
      this.SUBRULE(this.expression);
      this.MANY({
        GATE: () => !this.is(t.RBracket, 2),
        DEF: () => {
          this.CONSUME(t.Comma);
          this.SUBRULE2(this.expression);
        },
      });
      this.OPTION2(() => this.CONSUME2(t.Comma));
    });
    this.CONSUME(t.RBracket);
  });
}

export { EOF };
