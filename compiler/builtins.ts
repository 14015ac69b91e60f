// The names every .lrk scope starts with (besides `std`). They are the keys of the table that
// lowers each on tensors (tensor-builtins.ts), so no name is in scope without saying what it does
// there, even if that is "not available" (initializers, schedules, reserved names). A re-export,
// not a copy: resolve.ts reads it only when a Resolver is made, so the import cycle through
// lower.ts never sees it uninitialized, whichever module is loaded first.
export { builtinNames } from "./tensor-builtins.js";
