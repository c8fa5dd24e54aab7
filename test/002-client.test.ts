// test/002-client.ts against real servers in real processes: stage 005, nothing at all, and deliberately wrong
// servers started here (a byte-flipper, a resetter, one that closes early, one that never answers).

import { describe, expect, test } from "bun:test";
import { startFaultyEchoServer, unusedPort } from "./support/net.ts";
import { runToExit, startStage } from "./support/process.ts";

const CLIENT = "test/002-client.ts";
const SERVER = "tcp_echo_server/005-bounded-concurrency.ts";

async function client(...args: string[]) {
  return runToExit(CLIENT, args, { timeoutMs: 30_000 });
}

describe("002-client", () => {
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

  test("several messages per connection, large enough to be split by TCP, no delay: every one ok", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn", "--max-clients", "20"]);
    const args = ["-n", "50", "--messages", "10", "--length", "200000", "--delay", "0", "--port", String(server.port)];
    const { code, stdout } = await client(...args);
    expect(stdout).toContain("50 connections to 127.0.0.1:");
    expect(stdout).toContain("10 200000-byte messages each, started 0 ms apart");
    expect(stdout).toMatch(/^ {2}ok +50$/m);
    expect(code).toBe(0);
  });

  test("nothing listening: every connection refused, a clear message, exit 1", async () => {
    const port = unusedPort();
    const { code, stdout, stderr } = await client("-n", "5", "--port", String(port));
    expect(stdout).toMatch(/^ {2}ok +0$/m);
    expect(stdout).toMatch(/^ {4}refused +5 {2}connection refused: is a server listening there\?$/m);
    expect(stdout).toContain(`ECONNREFUSED from 127.0.0.1:${port}`);
    expect(stderr).toBe(`error: nothing is listening on 127.0.0.1:${port} (every connection was refused)\n`);
    expect(code).toBe(1);
  });

  test("a server that flips one byte of the second reply: mismatch with message number, offset and bytes", async () => {
    using server = startFaultyEchoServer({ kind: "flip", atOffset: 16 + 5 }, 2);
    const { code, stdout } = await client("-n", "6", "--messages", "3", "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +5$/m);
    expect(stdout).toMatch(/^ {4}mismatch +1 {2}the reply is not the uppercase of the request$/m);
    const detail = stdout.match(
      /first: connection \d+: message 2: reply byte at offset 5 is 0x[0-9a-f]{2} '(.)', expected 0x[0-9a-f]{2} '(.)'$/m,
    );
    expect(detail).not.toBeNull();
    expect(detail![1]).toMatch(/^[a-z]$/);
    expect(detail![1]!.toUpperCase()).toBe(detail![2]!);
    expect(code).toBe(1);
  });

  test("a server that resets in the middle of the third reply: counted as reset", async () => {
    using server = startFaultyEchoServer({ kind: "reset", afterBytes: 2 * 16 + 8 });
    const { code, stdout } = await client("-n", "20", "--messages", "5", "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +0$/m);
    expect(stdout).toMatch(/^ {4}reset +20 {2}the server reset the connection \(RST\)$/m);
    expect(stdout).toMatch(/first: connection \d+: message 3: ECONNRESET$/m);
    expect(code).toBe(1);
  });

  test("a server that closes before the whole reply: counted as closed, with how much arrived", async () => {
    using server = startFaultyEchoServer({ kind: "close", afterBytes: 16 + 8 });
    const { code, stdout } = await client("-n", "4", "--messages", "2", "--port", String(server.port));
    expect(stdout).toMatch(/^ {4}closed +4 /m);
    expect(stdout).toContain("message 2: closed after 8 of 16 reply bytes");
    expect(code).toBe(1);
  });

  test("a server that never answers: timeout after --timeout", async () => {
    using server = startFaultyEchoServer({ kind: "silent" });
    const { code, stdout } = await client("-n", "3", "--delay", "0", "--timeout", "0.3", "--port", String(server.port));
    expect(stdout).toMatch(/^ {4}timeout +3 /m);
    expect(stdout).toContain("message 1: 0 of 16 reply bytes after 300 ms");
    expect(code).toBe(1);
  });

  // Bun reports a socket() that failed for want of a descriptor as ECONNREFUSED; the client must not believe it.
  test.skipIf(Bun.which("prlimit") === null)("out of file descriptors: counted as EMFILE, not refused", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, stdout } = await runToExit(CLIENT, ["-n", "100", "--delay", "0", "--port", String(server.port)], {
      prefix: ["prlimit", "--nofile=60:60"],
      timeoutMs: 20_000,
    });
    expect(stdout).toMatch(/^ {4}EMFILE +\d+ {2}this process ran out of file descriptors \(ulimit -n\)$/m);
    expect(stdout).toContain("no file descriptor left for a new socket (Bun reports that as ECONNREFUSED)");
    expect(stdout).not.toContain("refused");
    expect(code).toBe(1);
  });

  test("usage: --help on stdout with exit 0; a bad option is one line on stderr with exit 2", async () => {
    const help = await client("--help");
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("Usage: bun test/002-client.ts [options]");
    for (const args of [["-n", "0"], ["--messages", "x"], ["--delay", "-5"], ["--bogus"], ["--timeout", "0"]]) {
      const bad = await client(...args);
      expect(bad.code).toBe(2);
      expect(bad.stdout).toBe("");
      expect(bad.stderr).toMatch(/^error: [^\n]+ \(see --help\)\n$/);
    }
  });
});
