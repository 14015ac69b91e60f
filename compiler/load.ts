// `load(path, tensor, shape)`: a tensor of a safetensors file as an initial value — a model's or
// an adapter's `param` initializer, or an adapter's `const` — read once when training starts (a
// trained predictor that a later run calls, NExt's). The program states the shape: the file is
// often another run's output, not written yet when this program is compiled or checked (as an
// `init` checkpoint). The init program reads it as an input named `load:<absolute path>:<tensor>`
// that the host fills from the file, checking the shape (runtime/trainer.ts).
import { resolve } from "node:path";
import { error } from "../language/diagnostics.js";
import { maxElements } from "./builder.js";
import { numel } from "./ir.js";
import type { Call } from "./tensor-builtins.js";
import { describeValue, type Value } from "./values.js";

const HELP =
  'e.g. `param W: f32[64, 32] = load("../runs/pred/final.safetensors", "param:l1.weight", [64, 32])`';

/** The input's name for `tensor` of the file at `path` (absolute). */
export function loadInputName(path: string, tensor: string): string {
  return `load:${path}:${tensor}`;
}

/** The `load` built-in: its arguments, checked now; the value comes from the hook. */
export function loadCall({ L, at, args, tensor }: Call): Value {
  const strings = [args.need(0, "path"), args.need(1, "tensor")];
  const shapeArg = args.need(2, "shape");
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
  const shape =
    shapeArg.kind === "list" &&
    shapeArg.items.every((d) => d.kind === "number" && Number.isInteger(d.value) && d.value > 0)
      ? shapeArg.items.map((d) => (d as { value: number }).value)
      : L.r.report(
          error(
            "E0402",
            `\`load\`'s shape must be a list of positive whole numbers, not ${describeValue(shapeArg)}`,
            args.argAt(2, "shape"),
            { help: HELP },
          ),
        );
  if (Array.isArray(shape) && numel(shape) > maxElements)
    return L.r.report(
      error(
        "E0401",
        `\`load\`'s shape [${shape.join(", ")}] has ${numel(shape).toExponential(2)} elements, more than one tensor can hold (2^31 - 1)`,
        args.argAt(2, "shape"),
        { help: HELP },
      ),
    );
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
  return tensor(hook.input(resolve(hook.dir, path), name, shape, "f32", at));
}
