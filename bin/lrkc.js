#!/usr/bin/env node
// The lrkc executable: a thin launcher for the compiled CLI in dist/.
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const entry = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  const root = fileURLToPath(new URL("..", import.meta.url));
  console.error(`lrkc is not built yet: run \`npm install\` (or \`npm run build\`) in ${root}`);
  process.exit(2);
}
const { main } = await import(entry.href);
const code = await main(process.argv);
// Flush what we printed before leaving: the GPU runtime can keep the event loop alive.
process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
