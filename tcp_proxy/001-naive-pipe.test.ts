import { describe, expect, test } from "bun:test";
import { allByteValues, decode, startEchoUpstream, TestClient, upperAscii } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_proxy/001-naive-pipe.ts";

describe("001 naive pipe", () => {
  test("prints the listening line and forwards a conversation both ways", async () => {
    // 001 drops what arrives before its upstream connection is open, and stores that connection when its connect
    // promise resolves. The upstream's greeting can reach the client only through that connection, after the
    // promise's resolution has run: once the client has it, what it sends is forwarded.
    await using upstream = startEchoUpstream({ greeting: "ready\n" });
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    expect(proxy.stdout.text).toBe(`listening on 127.0.0.1:${proxy.port}\n`);
    const client = await TestClient.connect(proxy.port);
    try {
      expect(decode(await client.readAtLeast(6))).toBe("ready\n");
      client.write("hello\n");
      expect(decode((await client.readAtLeast(12)).subarray(6))).toBe("HELLO\n");
      client.write(allByteValues());
      const reply = await client.readAtLeast(12 + 282);
      expect(reply.subarray(12)).toEqual(upperAscii(allByteValues())); // binary-safe
    } finally {
      client.close();
    }
  });

  test("closes the client when the upstream closes, or refuses, and keeps running", async () => {
    await using upstream = startEchoUpstream();
    await using proxy = await startStage(STAGE, ["--port", "0", "--upstream", upstream.address]);
    const client = await TestClient.connect(proxy.port);
    await upstream.waitAccepted(1);
    upstream.stop();
    expect(await client.endsWithin(2000)).toBe(true);
    const refused = await TestClient.connect(proxy.port); // upstream now down: the proxy hangs up at once
    expect(await refused.endsWithin(2000)).toBe(true);
    expect(proxy.proc.exitCode).toBeNull(); // still running
  });

  test("naive, but bad input is one line: exit 2 for options, exit 1 for a port in use", async () => {
    const usage: Array<[string[], string]> = [
      [["--bogus"], "error: Unknown option '--bogus' (see --help)\n"],
      [["--upstream", "nope"], 'error: --upstream must be HOST:PORT, got "nope"\n'],
      [["--port", "99999"], 'error: --port must be an integer from 0 to 65535, got "99999"\n'],
    ];
    const help = await runToExit(STAGE, ["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("Usage: bun tcp_proxy/001-naive-pipe.ts [options]");
    for (const [args, message] of usage) {
      const { code, stderr } = await runToExit(STAGE, args);
      expect([code, stderr]).toEqual([2, message]);
    }
    await using first = await startStage(STAGE, ["--port", "0"]);
    const taken = await runToExit(STAGE, ["--port", String(first.port)]);
    expect([taken.code, taken.stderr]).toEqual([
      1,
      `error: cannot listen on 127.0.0.1:${first.port}: address already in use\n`,
    ]);
  });
});
