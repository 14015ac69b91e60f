// Instantiation: a model applied to concrete arguments becomes a module tree in which every
// parameter has a path (`blocks.3.attn.q.weight`) and a concrete shape.
import type * as A from "../language/ast.js";
import { error } from "../language/diagnostics.js";
import type { DType } from "./ir.js";
import type { Module } from "./modules.js";
import { chain, Reported, type Resolver, type Scope } from "./resolve.js";
import { describeValue, type ModuleInstance, type ParamInfo, type Value } from "./values.js";

const dtypes: Record<string, DType> = { f32: "f32", i32: "i32" };

export function instantiate(
  r: Resolver,
  config: Extract<Value, { kind: "config" }>,
  path: string,
  extra: ReadonlyMap<string, Value> = new Map(),
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
  addMembers(r, instance, config.def.members, chain(vars, instance.lookup));
  return instance;
}

function join(path: string, name: string): string {
  return path ? `${path}.${name}` : name;
}

function addMembers(
  r: Resolver,
  instance: ModuleInstance,
  members: A.Member[],
  scope: Scope,
): void {
  const module = instance.module;
  for (const member of members) {
    r.attempt(() => addMember(r, instance, member, scope, module));
  }
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
      if (count < 0)
        r.report(
          error("E0402", `a block cannot repeat ${count} times`, r.at(module, member.count)),
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
      const value = r.speculate(() => r.evaluate(member.value, scope, module));
      const deferred = (name: string, index?: number): Value => ({
        kind: "deferred",
        expr: member.value,
        self: instance,
        name,
        index,
        constant: member.constant,
      });
      if (member.target.kind === "Name")
        vars.set(member.target.name, value ?? deferred(member.target.name));
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
    if (n < 0) r.report(error("E0402", `a dimension cannot be negative (${n})`, r.at(module, d)));
    return n;
  });
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
  const value = r.speculate(() => r.evaluate(e, scope, module));
  if (value && value.kind === "definition") {
    r.report(error("E0206", `${describeValue(value)} needs arguments here`, r.at(module, e)));
  }
  return value ?? { kind: "deferred", expr: e, self: instance };
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
