// `load(path, tensor)`: a tensor of a safetensors file as an initial value — a model's or an
// adapter's `param` initializer, or an adapter's `const` — read once when training starts (a
// trained predictor that a later run calls, NExt's). The file's header is read while compiling
// for the tensor's shape and dtype; the init program reads it as an input named
// `load:<absolute path>:<tensor>` that the host fills from the file (runtime/trainer.ts).
import { resolve } from "node:path";
import { error } from "../language/diagnostics.js";
import type { DType } from "./ir.js";
import type { Call } from "./tensor-builtins.js";
import { readTensorHeader } from "./tensor-files.js";
import { describeValue, type Value } from "./values.js";

const HELP =
  'e.g. `param W: f32[64, 32] = load("../runs/pred/final.safetensors", "param:l1.weight")`';

const DTYPES: Record<string, DType> = {
  F32: "f32",
  F64: "f32",
  F16: "f32",
  BF16: "f32",
  I32: "i32",
};

/** The input's name for `tensor` of the file at `path` (absolute). */
export function loadInputName(path: string, tensor: string): string {
  return `load:${path}:${tensor}`;
}

/** The `load` built-in: the file and tensor, checked now; the value comes from the hook. */
export function loadCall({ L, at, args, tensor }: Call): Value {
  const strings = [args.need(0, "path"), args.need(1, "tensor")];
  args.done();
  const [path, name] = strings.map((v, i) =>
    v.kind === "string"
      ? v.value
      : L.r.report(
          error(
            "E0402",
            `\`load\`'s ${i === 0 ? "path" : "tensor name"} must be a string, not ${describeValue(v)}`,
            args.argAt(i),
            { help: HELP },
          ),
        ),
  ) as [string, string];
  const hook = L.hooks.load;
  if (!hook)
    return L.r.report(
      error(
        "E0206",
        "`load` reads a file once, when training starts: it can only be a `param`'s initial value or an adapter's `const`",
        at,
        { help: HELP },
      ),
    );
  // relative to the train block's file, like `init`: an adapter of std.adapters passes on a path
  // its user wrote
  const full = resolve(hook.dir, path);
  const header = readTensorHeader(full);
  if (typeof header === "string")
    return L.r.report(
      error(
        "E0502",
        `\`load\` cannot read "${path}" (looked for ${full}): ${header}`,
        args.argAt(0),
        {
          help: "a relative path is relative to the .lrk file of the train block; train the program that writes it first",
        },
      ),
    );
  const entry = header.get(name);
  if (!entry) {
    const names = [...header.keys()].sort();
    return L.r.report(
      error("E0502", `"${path}" holds no tensor \`${name}\``, args.argAt(1), {
        help:
          names.length > 0
            ? `it holds ${names
                .slice(0, 8)
                .map((n) => `\`${n}\``)
                .join(", ")}${names.length > 8 ? `, … (${names.length})` : ""}`
            : "the file holds no tensors",
      }),
    );
  }
  const dtype = DTYPES[entry.dtype];
  if (!dtype)
    return L.r.report(
      error(
        "E0502",
        `\`${name}\` in "${path}" is ${entry.dtype}, which lrk does not read`,
        args.argAt(1),
        {
          help: "save it as F32",
        },
      ),
    );
  return tensor(hook.input(full, name, entry.shape, dtype, at));
}
