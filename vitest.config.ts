import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["tests/**/*.test.ts"],
    testTimeout: 60_000,
    // Two files at a time, even on 2 cores: many tests wait on spawned lrkc processes or on
    // lavapipe's shader compiles. A clean clone with a cold Mesa shader cache: 774 s one file at
    // a time, 572 s two at a time.
    maxWorkers: 2,
  },
});
