// An internal error (a bug in lrkc) exits 2 and says so, without blaming the user's program.
import { afterEach, describe, expect, it, vi } from "vitest";

vi.mock("../cli/check.js", () => ({
  checkCommand: () => {
    throw new TypeError("cannot read properties of undefined");
  },
}));

describe("internal errors", () => {
  afterEach(() => vi.restoreAllMocks());

  it("exit 2 and say it is a bug", async () => {
    const { main } = await import("../cli/main.js");
    const stderr = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    const code = await main(["node", "lrkc", "check", "x.lrk"]);
    expect(code).toBe(2);
    const printed = stderr.mock.calls.map((c) => String(c[0])).join("");
    expect(printed).toContain("internal error: cannot read properties of undefined");
    expect(printed).toContain("This is a bug in lrkc");
  });
});
