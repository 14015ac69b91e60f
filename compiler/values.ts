// What a .lrk expression can evaluate to while compiling. Tensors are IR nodes; everything else
// (numbers, definitions, configured methods, module instances) is known at compile time.
import type * as A from "../language/ast.js";
import type { Location } from "../language/diagnostics.js";
import type { Module } from "./modules.js";
import type { DType, Shape } from "./ir.js";

export type Value =
  | { kind: "number"; value: number; integer: boolean }
  | { kind: "bool"; value: boolean }
  | { kind: "string"; value: string }
  | { kind: "list"; items: Value[] }
  | { kind: "tuple"; items: Value[] }
  | { kind: "tensor"; node: number; shape: Shape; dtype: DType }
  | { kind: "definition"; def: A.Definition; module: Module }
  /** A definition applied to arguments: `lora(rank: 8)`, `adamw(lr: 1e-3)`. */
  | { kind: "config"; def: A.Definition; module: Module; args: Map<string, Value>; at: Location }
  | { kind: "instance"; instance: ModuleInstance }
  | {
      kind: "namespace";
      name: string;
      members: (name: string) => Value | undefined;
      names: () => string[];
    }
  | { kind: "builtin"; name: string }
  | { kind: "dataset"; dataset: DataSet }
  /** A member function bound to the module instance (or adapter) it belongs to. */
  | { kind: "function"; fn: A.FunctionDef; self: ModuleInstance }
  /** A learning-rate schedule: `cosine(warmup: 50)`. */
  | { kind: "schedule"; name: string; args: Map<string, number> }
  /** Named fields: a batch (`batch.input`), read with `.`. */
  | { kind: "struct"; what: string; fields: Map<string, Value> }
  /** A callable made by the compiler (an adapter's `base`), with the members of `members`. */
  | {
      kind: "bound";
      what: string;
      call: (args: { name?: string; value: Value; at: Location }[], at: Location) => Value;
      /** Where `.name` looks, in order (a quantizer's members, then the module's own). */
      members?: ModuleInstance[];
    }
  /** A parameter of a module, before any graph exists. */
  | { kind: "param"; param: ParamInfo }
  /** An expression that needs tensors: evaluated when a function that uses it is lowered. */
  | {
      kind: "deferred";
      expr: A.Expr;
      self: ModuleInstance;
      /** The member's name, and for `const (a, b) = …` which element this name is. */
      name?: string;
      index?: number;
      /** From a `const` member: a quantizer's consts are computed once and stored as buffers. */
      constant?: boolean;
    };

export interface DataSet {
  /** `arithmetic`, `text`. */
  source: string;
  args: Map<string, Value>;
  vocab: number;
  /** `arith.train` / `arith.valid`; absent for a bare `arith` (training reads its train split). */
  split?: "train" | "valid";
  at: Location;
}

export interface ParamInfo {
  /** `blocks.0.attn.q.weight` */
  path: string;
  name: string;
  shape: number[];
  dtype: DType;
  init?: A.Expr;
  decl: A.ParamMember;
  owner: ModuleInstance;
}

/** One node of the module tree: a model (or adapter) instantiated with concrete arguments. */
export interface ModuleInstance {
  /** The model definition; for a repeated block, the definition it appears in. */
  def: A.Definition;
  /** `Linear`, or `blocks[i]` for a repeated block. */
  typeName: string;
  module: Module;
  /** `` for the root, `blocks.0.attn.q` below it. */
  path: string;
  /** Parameters, defines and submodules in scope inside the definition's functions. */
  scope: Map<string, Value>;
  /** What the members see beyond `scope`: enclosing blocks, then the module's top level. */
  lookup: import("./resolve.js").Scope;
  params: ParamInfo[];
  children: ModuleInstance[];
  /** `state`, `regularize` and `at` members on the branches taken (optimizers, adapters, budgets). */
  states: A.StateMember[];
  regularizers: A.Regularize[];
  actions: A.At[];
  /** Where this instance was created (the call). */
  at: Location;
  /** A `require` failed: the members after it were not added (their absence is not a new error). */
  failed?: boolean;
}

export function describeValue(v: Value): string {
  switch (v.kind) {
    case "number":
      return v.integer ? "an integer" : "a number";
    case "bool":
      return "a bool";
    case "string":
      return "a string";
    case "list":
      return "a list";
    case "tuple":
      return "a tuple";
    case "tensor":
      return `a tensor ${v.dtype}[${v.shape.join(", ")}]`;
    case "definition":
      return `the ${v.def.sort} \`${v.def.name.name}\``;
    case "config":
      return `the ${v.def.sort} \`${v.def.name.name}(…)\``;
    case "instance":
      return `a \`${v.instance.typeName}\` module`;
    case "namespace":
      return `the module \`${v.name}\``;
    case "builtin":
      return `the built-in \`${v.name}\``;
    case "dataset":
      return "a data set";
    case "function":
      return `the function \`${v.fn.name.name}\``;
    case "struct":
      return v.what;
    case "bound":
      return v.what;
    case "schedule":
      return `the schedule \`${v.name}\``;
    case "param":
      return `the parameter \`${v.param.path}\``;
    case "deferred":
      return "a tensor expression";
  }
}

export const num = (value: number, integer = Number.isInteger(value)): Value => ({
  kind: "number",
  value,
  integer,
});
