// test/001-client.ts against real servers in real processes: stage 005, nothing at all, and deliberately wrong
// servers started here (a byte-flipper, a resetter, one that closes early, one that never answers).

import { describe, expect, test } from "bun:test";
import { startFaultyEchoServer, unusedPort } from "./support/net.ts";
import { runToExit, startStage } from "./support/process.ts";

const CLIENT = "test/001-client.ts";
const SERVER = "tcp_echo_server/005-bounded-concurrency.ts";

async function client(...args: string[]) {
  return runToExit(CLIENT, args, { timeoutMs: 20_000 });
}

describe("001-client", () => {
  test("300 connections at once against stage 005: every one ok, exit 0", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, stdout, stderr } = await client("-n", "300", "--length", "100", "--port", String(server.port));
    expect(stdout).toContain(`300 connections to 127.0.0.1:${server.port}, one 100-byte message each`);
    expect(stdout).toMatch(/^ {2}ok +300$/m);
    expect(stdout).toMatch(/^ {2}failed +0$/m);
    expect(stdout).toMatch(/^ {2}elapsed +\d+\.\d{3} s$/m);
    expect(stderr).toBe("");
    expect(code).toBe(0);
  });

  test("replies split by TCP into many reads are put together before the check", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, stdout } = await client("-n", "5", "--length", "500000", "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +5$/m);
    expect(code).toBe(0);
  });

  // A server that answers nobody until all 60 are connected at the same time: only a client that really opens
  // its connections all at once (rather than one after another) gets its replies before the timeout.
  test("opens all connections at once: a server that waits for 60 simultaneous clients answers them all", async () => {
    using server = startFaultyEchoServer({ kind: "barrier", connections: 60 });
    const { code, stdout } = await client("-n", "60", "--timeout", "5", "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +60$/m);
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

  test("a server that flips one byte: the mismatch is caught, with its offset and both bytes", async () => {
    using server = startFaultyEchoServer({ kind: "flip", atOffset: 5 }, 3);
    const { code, stdout } = await client("-n", "10", "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +9$/m);
    expect(stdout).toMatch(/^ {4}mismatch +1 {2}the reply is not the uppercase of the request$/m);
    const detail = stdout.match(
      /first: connection \d+: reply byte at offset 5 is 0x[0-9a-f]{2} '(.)', expected 0x[0-9a-f]{2} '(.)'$/m,
    );
    expect(detail).not.toBeNull();
    expect(detail![1]).toMatch(/^[a-z]$/); // the flipped byte came back lowercase...
    expect(detail![1]!.toUpperCase()).toBe(detail![2]!); // ...where its uppercase was due
    expect(code).toBe(1);
  });

  test("a server that resets mid-reply: counted as reset", async () => {
    using server = startFaultyEchoServer({ kind: "reset", afterBytes: 8 });
    const { code, stdout } = await client("-n", "20", "--length", "16", "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +0$/m);
    expect(stdout).toMatch(/^ {4}reset +20 {2}the server reset the connection \(RST\)$/m);
    expect(code).toBe(1);
  });

  test("a server that closes before the whole reply: counted as closed, with how much arrived", async () => {
    using server = startFaultyEchoServer({ kind: "close", afterBytes: 8 });
    const { code, stdout } = await client("-n", "4", "--length", "16", "--port", String(server.port));
    expect(stdout).toMatch(/^ {4}closed +4 /m);
    expect(stdout).toContain("closed by the server after 8 of 16 reply bytes");
    expect(code).toBe(1);
  });

  test("a server that never answers: timeout after --timeout", async () => {
    using server = startFaultyEchoServer({ kind: "silent" });
    const { code, stdout } = await client("-n", "3", "--timeout", "0.3", "--port", String(server.port));
    expect(stdout).toMatch(/^ {4}timeout +3 /m);
    expect(stdout).toContain("0 of 16 reply bytes after 300 ms");
    expect(code).toBe(1);
  });

  // Bun reports a socket() that failed for want of a descriptor as ECONNREFUSED; the client must not believe it.
  test.skipIf(Bun.which("prlimit") === null)("out of file descriptors: counted as EMFILE, not refused", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, stdout } = await runToExit(CLIENT, ["-n", "100", "--port", String(server.port)], {
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
    expect(help.stdout).toStartWith("Usage: bun test/001-client.ts [options]");
    for (const args of [["-n", "0"], ["--port", "http"], ["--bogus"], ["--timeout", "-1"]]) {
      const bad = await client(...args);
      expect(bad.code).toBe(2);
      expect(bad.stdout).toBe("");
      expect(bad.stderr).toMatch(/^error: .+ \(see --help\)\n$/);
    }
  });
});
