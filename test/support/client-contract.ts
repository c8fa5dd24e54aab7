// The behaviour every echo client stage promises (test/001-client.ts, test/002-client.ts, ...), registered as
// tests by each client's own test file, as the echo stages share echo-contract.ts: against a real stage 005 every
// connection is ok; against nothing, or against a deliberately wrong server started here (a byte-flipper, a
// resetter, one that closes early, one that never answers), every failure is counted under its cause with the
// first one described; running out of file descriptors is not mistaken for a refusal; usage errors are one line.

import { expect, test } from "bun:test";
import { startFaultyEchoServer, unusedPort } from "./net.ts";
import { runToExit, startStage } from "./process.ts";

const SERVER = "tcp_echo_server/005-bounded-concurrency.ts";

/** A client stage, and the few ways in which it words or paces what the contract checks. */
export interface ClientStage {
  file: string;
  /** How long one run may take. */
  timeoutMs: number;
  /** Arguments for runs where the stage's own pacing is beside the point (002's stagger: ["--delay", "0"]). */
  quick?: string[];
  /**
   * Messages per connection in the fault tests (default 1), and the arguments that ask for that many. With more
   * than one, the faults strike in a later message, so the stage must say which.
   */
  messages?: { count: number; args: string[] };
  /** How the stage says where in a connection a failure happened: "" (one message) or "message N: ". */
  where: (message: number) => string;
  /** How the stage words a reply cut short by the server's FIN. */
  closedEarly: (received: number, expected: number) => string;
  /** Arguments that are usage errors. */
  badUsage: string[][];
}

export function clientContractTests(stage: ClientStage): void {
  const { file, quick = [], where, closedEarly } = stage;
  const messages = stage.messages?.count ?? 1;
  const messageArgs = stage.messages?.args ?? [];
  /** The message the faults strike: the last one, so that every earlier one had to be right. */
  const struck = messages;
  const before = (struck - 1) * 16; // reply bytes of the messages before it (16-byte messages)
  const client = (...args: string[]) => runToExit(file, args, { timeoutMs: stage.timeoutMs });

  test("against stage 005: every connection ok, the summary's lines, nothing on stderr, exit 0", async () => {
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
    const { code, stdout } = await client("-n", "5", "--length", "500000", ...quick, "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +5$/m);
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

  test("a server that flips one byte: the mismatch is caught, with where, the offset and both bytes", async () => {
    using server = startFaultyEchoServer({ kind: "flip", atOffset: before + 5 }, 3);
    const { code, stdout } = await client("-n", "10", ...messageArgs, ...quick, "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +9$/m);
    expect(stdout).toMatch(/^ {4}mismatch +1 {2}the reply is not the uppercase of the request$/m);
    const detail = stdout.match(
      new RegExp(
        `first: connection \\d+: ${where(struck)}reply byte at offset 5 is 0x[0-9a-f]{2} '(.)', ` +
          `expected 0x[0-9a-f]{2} '(.)'$`,
        "m",
      ),
    );
    expect(detail).not.toBeNull();
    expect(detail![1]).toMatch(/^[a-z]$/); // the flipped byte came back lowercase...
    expect(detail![1]!.toUpperCase()).toBe(detail![2]!); // ...where its uppercase was due
    expect(code).toBe(1);
  });

  test("a server that resets mid-reply: counted as reset, in the message it struck", async () => {
    using server = startFaultyEchoServer({ kind: "reset", afterBytes: before + 8 });
    const { code, stdout } = await client("-n", "20", "--length", "16", ...messageArgs, "--port", String(server.port));
    expect(stdout).toMatch(/^ {2}ok +0$/m);
    expect(stdout).toMatch(/^ {4}reset +20 {2}the server reset the connection \(RST\)$/m);
    expect(stdout).toMatch(new RegExp(`first: connection \\d+: ${where(struck)}ECONNRESET\\b`, "m"));
    expect(code).toBe(1);
  });

  test("a server that closes before the whole reply: counted as closed, with how much arrived", async () => {
    using server = startFaultyEchoServer({ kind: "close", afterBytes: before + 8 });
    const { code, stdout } = await client("-n", "4", "--length", "16", ...messageArgs, "--port", String(server.port));
    expect(stdout).toMatch(/^ {4}closed +4 /m);
    expect(stdout).toContain(`${where(struck)}${closedEarly(8, 16)}`);
    expect(code).toBe(1);
  });

  test("a server that never answers: timeout after --timeout", async () => {
    using server = startFaultyEchoServer({ kind: "silent" });
    const { code, stdout } = await client("-n", "3", ...quick, "--timeout", "0.3", "--port", String(server.port));
    expect(stdout).toMatch(/^ {4}timeout +3 /m);
    expect(stdout).toContain(`${where(1)}0 of 16 reply bytes after 300 ms`);
    expect(code).toBe(1);
  });

  // Bun reports a socket() that failed for want of a descriptor as ECONNREFUSED; the client must not believe it.
  test.skipIf(Bun.which("prlimit") === null)("out of file descriptors: counted as EMFILE, not refused", async () => {
    await using server = await startStage(SERVER, ["--port", "0", "--log-level", "warn"]);
    const { code, stdout } = await runToExit(file, ["-n", "100", ...quick, "--port", String(server.port)], {
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
    expect(help.stdout).toStartWith(`Usage: bun ${file} [options]`);
    for (const args of stage.badUsage) {
      const bad = await client(...args);
      expect({ args, code: bad.code, stdout: bad.stdout }).toEqual({ args, code: 2, stdout: "" });
      expect(bad.stderr).toMatch(/^error: [^\n]+ \(see --help\)\n$/);
    }
  });
}
