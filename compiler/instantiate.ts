// Instantiation: a model applied to concrete arguments becomes a module tree in which every
// parameter has a path (`blocks.3.attn.q.weight`) and a concrete shape.
import type * as A from "../language/ast.js";
import { error } from "../language/diagnostics.js";
import { maxElements } from "./builder.js";
import { numel, type DType } from "./ir.js";
import type { Module } from "./modules.js";
import { chain, Reported, type Resolver, type Scope } from "./resolve.js";
import { describeValue, type ModuleInstance, type ParamInfo, type Value } from "./values.js";

const dtypes: Record<string, DType> = { f32: "f32", i32: "i32" };

/**
 * The most copies of a repeated block: far beyond any real model, low enough that instantiating
 * the copies cannot exhaust memory before the parameter count is checked.
 */
const maxRepeats = 65536;

/** Modules nested in modules: real models nest a few deep; a model that contains itself never ends. */
export const maxModuleDepth = 100;
/** The models being instantiated now, outermost first. */
const nesting: Extract<Value, { kind: "config" }>[] = [];
/** Set when the nesting went too deep: every instantiation below fails at once (no retrying each). */
let tooDeep = false;

export function instantiate(
  r: Resolver,
  config: Extract<Value, { kind: "config" }>,
  path: string,
  extra: ReadonlyMap<string, Value> = new Map(),
): ModuleInstance {
  if (tooDeep) throw new Reported();
  if (nesting.length >= maxModuleDepth) {
    tooDeep = true;
    const defs = nesting.map((c) => c.def);
    const looping = defs.find((d, i) => defs.indexOf(d, i + 1) > i) ?? config.def;
    const name = `\`${looping.name.name}\``;
    r.report(
      error(
        "E0210",
        `${name} contains itself: modules nest more than ${maxModuleDepth} deep (${name} → … → ${name} → …)`,
        config.at,
        { help: "a model cannot contain itself, directly or through its submodules" },
      ),
    );
  }
  nesting.push(config);
  try {
    return instantiateMembers(r, config, path, extra);
  } finally {
    nesting.pop();
    if (nesting.length === 0) tooDeep = false;
  }
}

function instantiateMembers(
  r: Resolver,
  config: Extract<Value, { kind: "config" }>,
  path: string,
  extra: ReadonlyMap<string, Value>,
): ModuleInstance {
  const vars = new Map<string, Value>([...config.args, ...extra]);
  const instance: ModuleInstance = {
    def: config.def,
    typeName: config.def.name.name,
    module: config.module,
    path,
    scope: vars,
    lookup: r.scopeOf(config.module),
    params: [],
    children: [],
    states: [],
    regularizers: [],
    actions: [],
    at: config.at,
  };
  r.fromUserSite(config.at, () =>
    addMembers(r, instance, config.def.members, chain(vars, instance.lookup)),
  );
  if (path === "") checkModelSize(r, instance);
  return instance;
}

/**
 * The whole model within 2^31 - 1 parameter elements (8 GiB of f32, before optimizer state):
 * beyond that no device lrk runs on can hold it, and the init program would only fail later.
 */
function checkModelSize(r: Resolver, root: ModuleInstance): void {
  const total = allParams(root).reduce((sum, p) => sum + numel(p.shape), 0);
  if (total > maxElements)
    r.diagnostics.push(
      error(
        "E0401",
        `this model has ${total.toExponential(2)} parameter elements, more than lrk can hold (2^31 - 1)`,
        root.at,
        { help: "make it smaller: fewer or narrower layers" },
      ),
    );
}

/**
 * `count` copies of `block` within the parameter elements lrk can hold, checked before the copies
 * are made: reported as checkModelSize reports the whole model (at its `model` line), with the
 * copies' elements as the model's (a lower bound of its total).
 */
function checkRepeatSize(r: Resolver, block: ModuleInstance, count: number): void {
  const total = count * allParams(block).reduce((sum, p) => sum + numel(p.shape), 0);
  if (total > maxElements)
    r.report(
      error(
        "E0401",
        `this model has ${total.toExponential(2)} parameter elements, more than lrk can hold (2^31 - 1)`,
        nesting[0]!.at,
        { help: "make it smaller: fewer or narrower layers" },
      ),
    );
}

function join(path: string, name: string): string {
  return path ? `${path}.${name}` : name;
}

/** The names each instance's members declared so far (an `if` member's taken branch included). */
const declaredMembers = new WeakMap<ModuleInstance, Map<string, A.Name>>();

/** The names a member declares. */
function memberNames(member: A.Member): A.Name[] {
  switch (member.kind) {
    case "ParamMember":
    case "Define":
    case "Repeat":
    case "Function":
    case "StateMember":
      return [member.name];
    case "Let":
      return member.target.kind === "Name" ? [member.target] : member.target.names;
    default:
      return [];
  }
}

/** E0202 for a member name declared twice in one definition: the second would silently win. */
function declareMember(r: Resolver, instance: ModuleInstance, member: A.Member): void {
  let declared = declaredMembers.get(instance);
  if (!declared) declaredMembers.set(instance, (declared = new Map()));
  for (const name of memberNames(member)) {
    const previous = declared.get(name.name);
    if (previous) {
      r.report(
        error("E0202", `\`${name.name}\` is defined twice`, r.at(instance.module, name), {
          notes: [{ message: "first defined here", at: r.at(instance.module, previous) }],
          help: "rename one of them",
        }),
      );
    }
    declared.set(name.name, name);
  }
}

function addMembers(
  r: Resolver,
  instance: ModuleInstance,
  members: A.Member[],
  scope: Scope,
): void {
  const module = instance.module;
  for (const member of members) {
    const added = r.attempt(() => {
      declareMember(r, instance, member);
      addMember(r, instance, member, scope, module);
      return true;
    });
    // A failed `require` says the arguments are wrong: the members after it would only report
    // what follows from that (a `param` with a dim of 0), at the same call.
    if (!added && isRequire(member)) {
      instance.failed = true;
      return;
    }
  }
}

function isRequire(member: A.Member): boolean {
  return (
    member.kind === "Let" &&
    member.value.kind === "Call" &&
    member.value.callee.kind === "NameExpr" &&
    member.value.callee.name === "require"
  );
}

function addMember(
  r: Resolver,
  instance: ModuleInstance,
  member: A.Member,
  scope: Scope,
  module: Module,
): void {
  const vars = instance.scope;
  switch (member.kind) {
    case "ParamMember": {
      if (instance.def.sort === "adapter") checkAdapterInit(r, instance, member);
      const param = paramInfo(r, instance, member, scope, module);
      instance.params.push(param);
      vars.set(member.name.name, { kind: "param", param });
      return;
    }
    case "Define": {
      const value = defineValue(r, instance, member, scope, module);
      vars.set(member.name.name, value);
      return;
    }
    case "Repeat": {
      const count = r.integer(member.count, scope, module, "the number of repeated blocks");
      if (count < 0 || count > maxRepeats)
        r.report(
          error("E0402", `a block cannot repeat ${count} times`, r.at(module, member.count), {
            help: `a block repeats from 0 to ${maxRepeats} times`,
          }),
        );
      const blocks: Value[] = [];
      for (let i = 0; i < count; i++) {
        const blockVars = new Map<string, Value>();
        const block: ModuleInstance = {
          def: instance.def,
          typeName: `${member.name.name}[${i}]`,
          module,
          path: join(instance.path, `${member.name.name}.${i}`),
          scope: blockVars,
          lookup: scope,
          params: [],
          children: [],
          states: [],
          regularizers: [],
          actions: [],
          at: r.at(module, member),
        };
        addMembers(r, block, member.members, chain(blockVars, scope));
        instance.children.push(block);
        blocks.push({ kind: "instance", instance: block });
        // The copies are alike: refuse a model too large to hold before making 65536 of them.
        if (i === 0) checkRepeatSize(r, block, count);
      }
      vars.set(member.name.name, { kind: "list", items: blocks });
      return;
    }
    case "IfMember": {
      let branch: A.IfMember | A.Member[] | undefined = member;
      while (branch && !Array.isArray(branch)) {
        const condition = r.truthy(
          r.evaluate(branch.condition, scope, module),
          branch.condition,
          module,
        );
        if (condition) {
          branch = branch.then;
          break;
        }
        branch = branch.else;
      }
      if (branch) addMembers(r, instance, branch, scope);
      return;
    }
    case "Let": {
      const checks = isRequire(member);
      // A `require` check is evaluated now and reports; other values may wait for tensors.
      const value = checks
        ? r.evaluate(member.value, scope, module)
        : r.speculate(() => r.evaluate(member.value, scope, module));
      const deferred = (name: string, index?: number): Value => ({
        kind: "deferred",
        expr: member.value,
        self: instance,
        name,
        index,
        constant: member.constant,
      });
      if (member.target.kind === "Name")
        vars.set(
          member.target.name,
          value
            ? r.typedValue(member.target, member.type, value, r.at(module, member.value))
            : deferred(member.target.name),
        );
      else member.target.names.forEach((n, i) => vars.set(n.name, deferred(n.name, i)));
      return;
    }
    case "Function":
      vars.set(member.name.name, { kind: "function", fn: member, self: instance });
      return;
    case "StateMember":
      instance.states.push(member);
      return;
    case "Regularize":
      instance.regularizers.push(member);
      return;
    case "At":
      instance.actions.push(member);
      return;
    case "Error":
      throw new Reported();
  }
}

/**
 * Adapters are initialized after the model, each param on its own (init.ts): an initializer that
 * reads another of the adapter's params would have no value to read.
 */
function checkAdapterInit(r: Resolver, instance: ModuleInstance, member: A.ParamMember): void {
  if (!member.init) return;
  const names: A.NameExpr[] = [];
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (node && typeof node === "object") {
      if ((node as A.Expr).kind === "NameExpr") names.push(node as A.NameExpr);
      else for (const [key, v] of Object.entries(node)) if (key !== "span") walk(v);
    }
  };
  walk(member.init);
  for (const n of names) {
    if (instance.scope.get(n.name)?.kind !== "param") continue;
    r.report(
      error(
        "E0206",
        `\`${member.name.name}\`'s initializer cannot read \`${n.name}\`, another param of this adapter`,
        r.at(instance.module, n),
        {
          help: "initialize it from the arguments or `base.weight` (e.g. `zeros`), or compute the value in `forward`",
        },
      ),
    );
  }
}

function paramInfo(
  r: Resolver,
  owner: ModuleInstance,
  member: A.ParamMember,
  scope: Scope,
  module: Module,
): ParamInfo {
  const type = member.type;
  const dtype = dtypes[type.name.name];
  if (!dtype) {
    r.report(
      error(
        "E0402",
        `a parameter must be a tensor such as \`f32[…]\`, not \`${type.name.name}\``,
        r.at(module, type),
        {
          help: "write its element type and shape, e.g. `param w: f32[out, in]`",
        },
      ),
    );
  }
  const shape = (type.dims ?? []).map((d) => {
    if (d.kind === "Ellipsis") {
      return r.report(
        error(
          "E0402",
          "a parameter's shape must be fully known: `...` is not allowed here",
          r.at(module, d),
        ),
      );
    }
    const n = r.integer(d, scope, module, "a dimension");
    if (n < 1)
      r.report(
        error("E0402", `a dimension must be at least 1, but this one is ${n}`, r.at(module, d)),
      );
    return n;
  });
  if (numel(shape) > maxElements) {
    r.report(
      error(
        "E0401",
        `parameter \`${member.name.name}\` of shape [${shape.join(", ")}] has ${numel(shape)} elements, more than one tensor can hold (2^31 - 1)`,
        r.at(module, type),
      ),
    );
  }
  return {
    path: join(owner.path, member.name.name),
    name: member.name.name,
    shape,
    dtype,
    init: member.init,
    decl: member,
    owner,
  };
}

function defineValue(
  r: Resolver,
  instance: ModuleInstance,
  member: A.Define,
  scope: Scope,
  module: Module,
): Value {
  const e = member.value;
  if (e.kind === "Call") {
    const callee = r.speculate(() => r.evaluate(e.callee, scope, module));
    if (callee?.kind === "definition") {
      if (callee.def.sort !== "model") {
        r.report(
          error(
            "E0206",
            `\`${member.name.name}\` must be a module, but \`${callee.def.name.name}\` is ${callee.def.sort === "adapter" ? "an" : "a"} ${callee.def.sort}`,
            r.at(module, e.callee),
            {
              help:
                callee.def.sort === "adapter"
                  ? "apply adapters in a train block: `adapt <selector> with …`"
                  : undefined,
            },
          ),
        );
      }
      const args = r.bindArguments(callee.def, callee.module, e, scope, module);
      const child = instantiate(
        r,
        { kind: "config", def: callee.def, module: callee.module, args, at: r.at(module, e) },
        join(instance.path, member.name.name),
      );
      instance.children.push(child);
      return { kind: "instance", instance: child };
    }
  }
  if (
    e.kind === "Call" &&
    e.callee.kind === "NameExpr" &&
    scope.lookup(e.callee.name) === undefined &&
    !declaresName(instance.def.members, e.callee.name)
  ) {
    // `head = Linaer(2, 2)` would otherwise be a value deferred to a forward that may never
    // read it: the module would silently have no `head`.
    const home = stdModuleDeclaring(r, e.callee.name);
    if (home)
      r.report(
        error("E0204", `\`${e.callee.name}\` is not defined`, r.at(module, e.callee), {
          help: `it is in ${home}: add \`import ${home}.{${e.callee.name}}\``,
        }),
      );
    r.lookup(e.callee, scope, module);
  }
  const value = r.speculate(() => r.evaluate(e, scope, module));
  if (value && value.kind === "definition") {
    r.report(error("E0206", `${describeValue(value)} needs arguments here`, r.at(module, e)));
  }
  return value ?? { kind: "deferred", expr: e, self: instance, name: member.name.name };
}

/** The standard-library module that defines `name` (for an import it lacks), if one does. */
function stdModuleDeclaring(r: Resolver, name: string): string | undefined {
  for (const std of ["std.nn", "std.adapters", "std.optim", "std.quant", "std.models"]) {
    const items = r.loader.std(std)?.program.items ?? [];
    if (items.some((i) => i.kind === "Definition" && i.name.name === name)) return std;
  }
  return undefined;
}

/** Whether some member of a definition (in any `if` branch or repeated block) declares `name`. */
function declaresName(members: A.Member[], name: string): boolean {
  return members.some((m) => {
    if (memberNames(m).some((n) => n.name === name)) return true;
    if (m.kind === "Repeat") return declaresName(m.members, name);
    if (m.kind === "IfMember") {
      let branch: A.IfMember | A.Member[] | undefined = m;
      while (branch && !Array.isArray(branch)) {
        if (declaresName(branch.then, name)) return true;
        branch = branch.else;
      }
      return branch !== undefined && declaresName(branch, name);
    }
    return false;
  });
}

/** Every parameter of the tree, in definition order. */
export function allParams(root: ModuleInstance): ParamInfo[] {
  const out: ParamInfo[] = [];
  const walk = (m: ModuleInstance) => {
    out.push(...m.params);
    for (const c of m.children) walk(c);
  };
  walk(root);
  return out;
}

/** Every module of the tree, parents before children. */
export function allModules(root: ModuleInstance): ModuleInstance[] {
  const out: ModuleInstance[] = [];
  const walk = (m: ModuleInstance) => {
    out.push(m);
    for (const c of m.children) walk(c);
  };
  walk(root);
  return out;
}
