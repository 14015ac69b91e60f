// `lrkc devices`: the WebGPU adapter lrk would use, and its limits.
import { NoAdapterError, requestAdapter, summarize } from "../runtime/gpu.js";

export async function devicesCommand(options: { json?: boolean }): Promise<number> {
  let summary;
  try {
    summary = summarize(await requestAdapter());
  } catch (e) {
    if (!(e instanceof NoAdapterError)) throw e;
    if (options.json)
      process.stdout.write(
        JSON.stringify({ adapters: [], error: e.message, help: e.help }, null, 2) + "\n",
      );
    else process.stderr.write(`error: ${e.message}\n  = help: ${e.help}\n`);
    return 1;
  }
  if (options.json) {
    process.stdout.write(JSON.stringify({ adapters: [summary] }, null, 2) + "\n");
    return 0;
  }
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
  process.stdout.write(
    [
      `webgpu: ${summary.description} (${summary.vendor}, ${summary.architecture}${summary.fallback ? ", software fallback" : ""})`,
      `  features: ${summary.features.join(", ") || "none"}`,
      `  max storage binding ${mib(summary.maxStorageBufferBindingSize)}, max buffer ${mib(summary.maxBufferSize)}`,
      "cpu: the reference interpreter (always available; cpu64 runs it in float64)",
    ].join("\n") + "\n",
  );
  return 0;
}
