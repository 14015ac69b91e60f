import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    testTimeout: 60_000,
    // The parse cache (language/parse-cache.ts) of this run's compiles, kept out of the
    // developer's own ~/.cache.
    env: { XDG_CACHE_HOME: mkdtempSync(join(tmpdir(), "lrk-test-cache-")) },
  },
});
