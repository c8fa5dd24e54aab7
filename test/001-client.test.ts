// test/001-client.ts against real servers in real processes: the client contract every client stage keeps
// (support/client-contract.ts), and what 001 adds: all its connections open at once.

import { describe, expect, test } from "bun:test";
import { clientContractTests } from "./support/client-contract.ts";
import { startFaultyEchoServer } from "./support/net.ts";
import { runToExit } from "./support/process.ts";

const CLIENT = "test/001-client.ts";

describe("001-client", () => {
  clientContractTests({
    file: CLIENT,
    timeoutMs: 20_000,
    where: () => "",
    closedEarly: (received, expected) => `closed by the server after ${received} of ${expected} reply bytes`,
    badUsage: [["-n", "0"], ["--port", "http"], ["--bogus"], ["--timeout", "-1"]],
  });

  // A server that answers nobody until all 60 are connected at the same time: only a client that really opens
  // its connections all at once (rather than one after another) gets its replies before the timeout.
  test("opens all connections at once: a server that waits for 60 simultaneous clients answers them all", async () => {
    using server = startFaultyEchoServer({ kind: "barrier", connections: 60 });
    const args = ["-n", "60", "--timeout", "5", "--port", String(server.port)];
    const { code, stdout } = await runToExit(CLIENT, args, { timeoutMs: 20_000 });
    expect(stdout).toMatch(/^ {2}ok +60$/m);
    expect(code).toBe(0);
  });
});
