// test/002-client.ts against real servers in real processes: the client contract every client stage keeps
// (support/client-contract.ts, here with three messages per connection, so faults strike the third), and what
// 002 adds: staggered starts, several messages per connection, and what a refusal after some successes means.

import { describe, expect, test } from "bun:test";
import { clientContractTests } from "./support/client-contract.ts";
import { runToExit, startStage } from "./support/process.ts";

const CLIENT = "test/002-client.ts";
const SERVER = "tcp_echo_server/005-bounded-concurrency.ts";

async function client(...args: string[]) {
  return runToExit(CLIENT, args, { timeoutMs: 30_000 });
}

describe("002-client", () => {
  clientContractTests({
    file: CLIENT,
    timeoutMs: 30_000,
    quick: ["--delay", "0"],
    messages: { count: 3, args: ["--messages", "3"] },
    where: (message) => `message ${message}: `,
    closedEarly: (received, expected) => `closed after ${received} of ${expected} reply bytes`,
    badUsage: [["-n", "0"], ["--messages", "x"], ["--delay", "-5"], ["--bogus"], ["--timeout", "0"]],
  });

  // The contract behind the default --delay: -n 500 against stage 005 with its default limit (100) never fails.
  test("-n 500 with the default delay against stage 005 (default limit): every one ok, exit 0", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, stdout, stderr } = await client("-n", "500", "--port", String(server.port));
    expect(stdout).toContain(
      `500 connections to 127.0.0.1:${server.port}, one 16-byte message each, started 1 ms apart`,
    );
    expect(stdout).toMatch(/^ {2}ok +500$/m);
    expect(stdout).toMatch(/^ {2}failed +0$/m);
    // 499 pauses of at least 1 ms: the starts really are staggered.
    expect(Number(stdout.match(/^ {2}elapsed +(\d+\.\d+) s$/m)?.[1])).toBeGreaterThanOrEqual(0.499);
    expect(stderr).toBe("");
    expect(code).toBe(0);
  });

  // Stage 003 serves one client, then stops listening and exits: the later connections are refused. That is not
  // "nobody there", and the summary must not say so.
  test("refusals after some connections were accepted: the summary says what that means", async () => {
    await using server = await startStage("tcp_echo_server/003-loop.ts", ["--port", "0", "--log-level", "warn"]);
    const { code, stdout, stderr } = await client("-n", "3", "--delay", "300", "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +1$/m);
    const refused = "refused after \\d connections? (was|were) accepted";
    const meaning = "the server may serve one client at a time, or have exited";
    expect(stdout).toMatch(new RegExp(`^ {4}refused +[12] {2}${refused}: ${meaning}$`, "m"));
    expect(stdout).not.toContain("is a server listening there?");
    expect(stderr).toBe(""); // not "nothing is listening"
    expect(code).toBe(1);
  });

  test("several messages per connection, large enough to be split by TCP, no delay: every one ok", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn", "--max-clients", "20"]);
    const args = ["-n", "50", "--messages", "10", "--length", "200000", "--delay", "0", "--port", String(server.port)];
    const { code, stdout } = await client(...args);
    expect(stdout).toContain("50 connections to 127.0.0.1:");
    expect(stdout).toContain("10 200000-byte messages each, started 0 ms apart");
    expect(stdout).toMatch(/^ {2}ok +50$/m);
    expect(code).toBe(0);
  });
});
