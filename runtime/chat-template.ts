// Chat templates: the Jinja subset Hugging Face tokenizers' `chat_template` strings use, rendered
// as transformers' apply_chat_template does (trim_blocks and lstrip_blocks on; variables
// `messages`, `bos_token`, `eos_token`, `add_generation_prompt`; `raise_exception(msg)`).
// Supported: text, {{ expr }}, {% for x in expr %}…{% endfor %} (with `loop.index`, `index0`,
// `first`, `last`, `length`), {% if %}/{% elif %}/{% else %}/{% endif %}, {% set x = expr %},
// {# comments #} and `-` whitespace control; expressions with literals, names, `.attr`, `a if c else b`,
// `[index]`, `[a:b]` slices, `+ - * / % ~`, comparisons, `in`, `and or not`, `is [not]
// defined|none|string`, and the filters trim, length, upper, lower. Anything else is a
// TemplateError that names it, so a template is rendered exactly or not at all.
import type { Tokenizer } from "./tokenizer.js";

export class TemplateError extends Error {
  constructor(
    message: string,
    readonly help = 'lrk renders a subset of Jinja (spec/language.md §18); use {"prompt", "completion"} lines instead',
  ) {
    super(message);
    this.name = "TemplateError";
  }
}

type V = unknown;
type Node =
  | { t: "text"; s: string }
  | { t: "out"; e: string }
  | { t: "for"; name: string; e: string; body: Node[] }
  | { t: "if"; arms: { e: string | null; body: Node[] }[] }
  | { t: "set"; name: string; e: string };

/** Template source to tokens: text and tags, with whitespace control already applied. */
function lex(src: string): { kind: "text" | "out" | "stmt"; s: string }[] {
  const out: { kind: "text" | "out" | "stmt"; s: string }[] = [];
  const re = /\{(\{|%|#)(-?)([\s\S]*?)(-?)(\}|%|#)\}/g;
  let last = 0;
  let trimNext = false;
  for (const m of src.matchAll(re)) {
    let text = src.slice(last, m.index);
    if (trimNext) text = text.replace(/^\s+/, "");
    const block = m[1] !== "{";
    if (m[2] === "-") text = text.replace(/\s+$/, "");
    else if (block && (text.includes("\n") || last === 0 || src[last - 1] === "\n"))
      text = text.replace(/(^|\n)[ \t]+$/, "$1"); // lstrip_blocks: only before a tag that starts its line
    out.push({ kind: "text", s: text });
    if (m[1] === "{") out.push({ kind: "out", s: m[3]! });
    else if (m[1] === "%") out.push({ kind: "stmt", s: m[3]!.trim() });
    last = m.index + m[0].length;
    trimNext = m[4] === "-";
    // trim_blocks: the first newline after a block tag goes.
    if (!trimNext && block && src[last] === "\n") last++;
  }
  let tail = src.slice(last);
  if (trimNext) tail = tail.replace(/^\s+/, "");
  out.push({ kind: "text", s: tail });
  return out.filter((t) => t.kind !== "text" || t.s !== "");
}

function parseTemplate(src: string): Node[] {
  const tokens = lex(src);
  let i = 0;
  const block = (ends: string[]): { body: Node[]; end: string } => {
    const body: Node[] = [];
    while (i < tokens.length) {
      const tok = tokens[i++]!;
      if (tok.kind === "text") body.push({ t: "text", s: tok.s });
      else if (tok.kind === "out") body.push({ t: "out", e: tok.s });
      else {
        const word = tok.s.split(/\s+/)[0]!;
        if (ends.includes(word)) return { body, end: tok.s };
        if (word === "for") {
          const m = /^for\s+(\w+)\s+in\s+([\s\S]+)$/.exec(tok.s);
          if (!m) throw new TemplateError(`cannot read the chat template's {% ${tok.s} %}`);
          body.push({ t: "for", name: m[1]!, e: m[2]!, body: block(["endfor"]).body });
        } else if (word === "if") {
          const arms: { e: string | null; body: Node[] }[] = [];
          let cond: string | null = tok.s.slice(2).trim();
          for (;;) {
            const { body: armBody, end } = block(["elif", "else", "endif"]);
            arms.push({ e: cond, body: armBody });
            if (end === "endif") break;
            cond = end.startsWith("elif") ? end.slice(4).trim() : null;
          }
          body.push({ t: "if", arms });
        } else if (word === "set") {
          const m = /^set\s+(\w+)\s*=\s*([\s\S]+)$/.exec(tok.s);
          if (!m)
            throw new TemplateError(`the chat template's {% ${tok.s} %} is not rendered by lrk`);
          body.push({ t: "set", name: m[1]!, e: m[2]! });
        } else
          throw new TemplateError(
            `the chat template uses {% ${word} %}, which lrk does not render`,
          );
      }
    }
    if (ends.length) throw new TemplateError(`the chat template has no {% ${ends.join(" / ")} %}`);
    return { body, end: "" };
  };
  return block([]).body;
}

// ---------------------------------------------------------------------------------------------
// Expressions: a tokenizer and a precedence-climbing evaluator over a scope.

const TOKEN =
  /\s*(?:("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(\d+(?:\.\d+)?)|([A-Za-z_]\w*)|(==|!=|<=|>=|[-+*/%~<>()[\]{}.,:|]))/y;

function lexExpr(e: string): string[] {
  const out: string[] = [];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < e.length) {
    if (/^\s*$/.test(e.slice(TOKEN.lastIndex))) break;
    const m = TOKEN.exec(e);
    if (!m) throw new TemplateError(`cannot read the chat template's expression \`${e.trim()}\``);
    out.push(m[1] ?? m[2] ?? m[3] ?? m[4]!);
  }
  return out;
}

const truthy = (v: V) =>
  Array.isArray(v)
    ? v.length > 0
    : v !== undefined && v !== null && v !== false && v !== 0 && v !== "";

function evaluate(e: string, scope: Map<string, V>): V {
  const toks = lexExpr(e);
  let p = 0;
  const peek = () => toks[p];
  const take = (want?: string) => {
    const t = toks[p++];
    if (want !== undefined && t !== want)
      throw new TemplateError(`the chat template's \`${e.trim()}\`: expected \`${want}\``);
    return t!;
  };
  const unsupportedName = (what: string): never => {
    throw new TemplateError(`the chat template uses \`${what}\`, which lrk does not render`);
  };

  const primary = (): V => {
    const t = take();
    if (t === undefined) throw new TemplateError(`the chat template's \`${e.trim()}\` ends early`);
    if (t === "(") {
      const v = or();
      take(")");
      return v;
    }
    if (t === "[") {
      const items: V[] = [];
      while (peek() !== "]") {
        items.push(or());
        if (peek() === ",") take();
      }
      take("]");
      return items;
    }
    if (t[0] === '"' || t[0] === "'")
      return t.slice(1, -1).replace(/\\(.)/g, (_, c: string) => ({ n: "\n", t: "\t" })[c] ?? c);
    if (/^\d/.test(t)) return Number(t);
    if (t === "true" || t === "True") return true;
    if (t === "false" || t === "False") return false;
    if (t === "none" || t === "None") return null;
    if (t === "raise_exception") {
      take("(");
      const message = or();
      take(")");
      throw new TemplateError(
        `the chat template refuses the conversation: ${String(message)}`,
        "fix the conversation",
      );
    }
    if (!/^[A-Za-z_]/.test(t)) return unsupportedName(t);
    return scope.get(t);
  };
  const postfix = (): V => {
    let v = primary();
    for (;;) {
      if (peek() === ".") {
        take();
        const name = take();
        if (peek() === "(") return unsupportedName(`.${name}()`);
        v = v !== null && typeof v === "object" ? (v as Record<string, V>)[name] : undefined;
      } else if (peek() === "[") {
        take();
        const start = peek() === ":" ? undefined : or();
        if (peek() === ":") {
          take();
          const end = peek() === "]" ? undefined : or();
          take("]");
          if (!Array.isArray(v) && typeof v !== "string") return unsupportedName("slice");
          v = (v as V[] | string).slice(start as number | undefined, end as number | undefined);
        } else {
          take("]");
          v =
            Array.isArray(v) && typeof start === "number" && start < 0
              ? v[v.length + start]
              : v !== null && typeof v === "object"
                ? (v as Record<string, V>)[String(start)]
                : undefined;
        }
      } else if (peek() === "|") {
        take();
        const filter = take();
        if (filter === "trim") v = String(v).trim();
        else if (filter === "length") v = (v as V[] | string).length;
        else if (filter === "upper") v = String(v).toUpperCase();
        else if (filter === "lower") v = String(v).toLowerCase();
        else return unsupportedName(`| ${filter}`);
      } else return v;
    }
  };
  const unary = (): V => (peek() === "-" ? (take(), -(unary() as number)) : postfix());
  const product = (): V => {
    let v = unary();
    while (peek() === "*" || peek() === "/" || peek() === "%") {
      const op = take();
      const w = unary() as number;
      v = op === "*" ? (v as number) * w : op === "/" ? (v as number) / w : (v as number) % w;
    }
    return v;
  };
  const sum = (): V => {
    let v = product();
    while (peek() === "+" || peek() === "-" || peek() === "~") {
      const op = take();
      const w = product();
      if (op === "~") v = String(v ?? "") + String(w ?? "");
      else if (op === "+") {
        if ((typeof v === "string") !== (typeof w === "string"))
          throw new TemplateError(
            `the chat template adds a string and a non-string in \`${e.trim()}\``,
          );
        v = (v as number) + (w as number);
      } else v = (v as number) - (w as number);
    }
    return v;
  };
  const compare = (): V => {
    const v = sum();
    const op = peek();
    if (op === "is") {
      take();
      const negate = peek() === "not" ? (take(), true) : false;
      const test = take();
      const result =
        test === "defined"
          ? v !== undefined
          : test === "none"
            ? v === null
            : test === "string"
              ? typeof v === "string"
              : unsupportedName(`is ${test}`);
      return negate ? !result : result;
    }
    if (op === "not" && toks[p + 1] === "in") {
      p += 2;
      return !contains(sum(), v);
    }
    if (op === "in") {
      take();
      return contains(sum(), v);
    }
    if (op === "==" || op === "!=" || op === "<" || op === ">" || op === "<=" || op === ">=") {
      take();
      const w = sum() as number;
      const a = v as number;
      return { "==": a === w, "!=": a !== w, "<": a < w, ">": a > w, "<=": a <= w, ">=": a >= w }[
        op
      ];
    }
    return v;
  };
  const not = (): V => (peek() === "not" ? (take(), !truthy(not())) : compare());
  const and = (): V => {
    let v = not();
    while (peek() === "and") {
      take();
      const w = not();
      v = truthy(v) ? w : v;
    }
    return v;
  };
  function or(): V {
    let v = and();
    while (peek() === "or") {
      take();
      const w = and();
      v = truthy(v) ? v : w;
    }
    return v;
  }
  // `a if condition else b` (both sides are evaluated: a template's branches have no effects).
  let v = or();
  if (peek() === "if") {
    take();
    const condition = or();
    const otherwise = peek() === "else" ? (take(), or()) : undefined;
    v = truthy(condition) ? v : otherwise;
  }
  if (p < toks.length) return unsupportedName(toks.slice(p).join(" "));
  return v;
}

function contains(container: V, item: V): boolean {
  if (typeof container === "string") return container.includes(String(item));
  if (Array.isArray(container)) return container.includes(item);
  if (container !== null && typeof container === "object") return String(item) in container;
  return false;
}

function render(nodes: Node[], scope: Map<string, V>): string {
  let out = "";
  for (const n of nodes) {
    if (n.t === "text") out += n.s;
    else if (n.t === "out") {
      const v = evaluate(n.e, scope);
      out += v === undefined || v === null ? "" : String(v);
    } else if (n.t === "set") scope.set(n.name, evaluate(n.e, scope));
    else if (n.t === "if") {
      const arm = n.arms.find((a) => a.e === null || truthy(evaluate(a.e, scope)));
      if (arm) out += render(arm.body, scope);
    } else {
      const items = evaluate(n.e, scope);
      if (!Array.isArray(items))
        throw new TemplateError(`the chat template loops over \`${n.e}\`, which is not a list`);
      const saved = [scope.get(n.name), scope.get("loop")];
      items.forEach((item, index) => {
        scope.set(n.name, item);
        scope.set("loop", {
          index: index + 1,
          index0: index,
          first: index === 0,
          last: index === items.length - 1,
          length: items.length,
        });
        out += render(n.body, scope);
      });
      scope.set(n.name, saved[0]);
      scope.set("loop", saved[1]);
    }
  }
  return out;
}

const parsed = new Map<string, Node[]>();

/** The text of `messages` in the tokenizer's chat template (no generation prompt). */
export function renderChat(
  tokenizer: Tokenizer,
  messages: { role: string; content: string }[],
  addGenerationPrompt = false,
): string {
  const source = tokenizer.chatTemplate;
  if (source === undefined) throw new TemplateError("the tokenizer has no chat template");
  let nodes = parsed.get(source);
  if (!nodes) {
    nodes = parseTemplate(source);
    parsed.set(source, nodes);
  }
  const scope = new Map<string, V>([
    ["messages", messages],
    ["bos_token", tokenizer.bosToken ?? ""],
    ["eos_token", tokenizer.eosToken ?? ""],
    ["add_generation_prompt", addGenerationPrompt],
  ]);
  try {
    return render(nodes, scope);
  } catch (e) {
    if (e instanceof TemplateError) throw e;
    // A value of the wrong kind met an operation (a filter on a missing field, …).
    throw new TemplateError(`the chat template cannot be rendered: ${(e as Error).message}`);
  }
}
