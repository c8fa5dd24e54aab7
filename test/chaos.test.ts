// The chaos run (test/chaos.ts) for about 30 s: load through the fault-injecting proxy to the echo server while
// its workers are killed. `bun run soak` runs the same for longer.
import { expect, test } from "bun:test";
import { runToExit } from "./support/process.ts";

test("chaos: every reply exact, every error explained by a killed worker, nothing leaks", async () => {
  const { code, stdout, stderr } = await runToExit("test/chaos.ts", ["--duration", "30s", "--json"], {
    timeoutMs: 90_000,
  });
  const report = JSON.parse(stdout) as {
    violations: string[];
    workerKills: number;
    rounds: number;
    messages: number;
    errors: Record<string, number>;
    finalRound: { messages: number; errors: Record<string, number> };
  };
  expect(report.violations, stderr).toEqual([]);
  expect(code).toBe(0);
  expect(report.workerKills).toBeGreaterThanOrEqual(3);
  expect(report.rounds).toBeGreaterThanOrEqual(5);
  expect(report.messages).toBeGreaterThan(0);
  expect(Object.keys(report.errors).filter((name) => name !== "reset" && name !== "closed")).toEqual([]);
  expect(report.errors.mismatch ?? 0).toBe(0);
  expect(report.finalRound.messages).toBeGreaterThan(0);
}, 120_000);

test("chaos: bad options are one line and exit 2", async () => {
  const { code, stdout, stderr } = await runToExit("test/chaos.ts", ["--duration", "soon"]);
  expect(code).toBe(2);
  expect(stdout).toBe("");
  expect(stderr).toBe('error: --duration must be a duration like 30, 30s, 500ms or 10m, got "soon" (see --help)\n');
});
