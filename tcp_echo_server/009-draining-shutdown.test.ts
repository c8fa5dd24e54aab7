import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests, payload, sameBytes } from "../test/support/echo-hardened.ts";
import { TestClient, upperAscii } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/009-draining-shutdown.ts";
const PREVIOUS = "tcp_echo_server/008-limits-not-a-waiting-room.ts";
const MiB = 1024 * 1024;

describe("009 a draining shutdown", () => {
  test("--port 0 prints one listening line; the log states the limits and the drain timeout", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-per-ip", "3", "--max-buffer", "1m"]);
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
    await server.waitForLog(/INFO  \[server \| active 0\/10000\] listening on/);
    expect(server.stderr.text).toContain(
      `listening on 127.0.0.1:${server.port} (at most 10000 clients at once, 3 per address, ` +
        "1 MiB reply queue per client, idle timeout 60 s, drain timeout 8 s)",
    );
  });

  test("-h prints usage listing every option; bad values are one-line usage errors (exit 2)", async () => {
    const help = await runToExit(STAGE, ["-h"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith(`Usage: bun ${STAGE} [options]`);
    for (const option of ["--max-clients", "--max-per-ip", "--max-buffer", "--idle-timeout", "--drain-timeout"]) {
      expect(help.stdout).toContain(option);
    }
    const errors: Array<[string[], string]> = [
      [
        ["--max-buffer", "lots"],
        'error: --max-buffer must be a positive number of bytes (k, m suffixes allowed), got "lots" (see --help)\n',
      ],
      [["--max-per-ip", "some"], 'error: --max-per-ip must be an integer (0 = no limit), got "some" (see --help)\n'],
      [
        ["--drain-timeout", "soon"],
        'error: --drain-timeout must be a number of seconds from 0 to 2147483, got "soon" (see --help)\n',
      ],
    ];
    for (const [args, message] of errors) {
      expect(await runToExit(STAGE, args)).toEqual({ code: 2, stdout: "", stderr: message });
    }
  });

  echoContractTests({ file: STAGE, args: ["--port", "0"] });

  hostileContractTests({ file: STAGE, kind: "echo", args: ["--port", "0"] });

  // The lesson: SIGTERM while a client is owed a reply it has not read yet (32 MiB sent, most of the reply queued
  // in the server). 008 closes at once and the queued part is lost; 009 delivers it, then closes, then exits 0.
  describe("SIGTERM while 32 MiB of reply are owed to a client that reads only afterwards", () => {
    const request = payload(32 * MiB, 5);
    const signalWhileOwed = async (file: string): Promise<{ reply: Uint8Array; code: number; log: string }> => {
      await using server = await startStage(file, ["--port", "0", "--max-buffer", "64m", "--log-level", "debug"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await client.flushed();
      await server.waitForLog(/received \d+ bytes/);
      server.proc.kill("SIGTERM");
      await server.waitForLog(/SIGTERM received/);
      client.resumeReading();
      const reply = await client.readToEnd(20_000);
      const code = await server.waitExit(10_000);
      return { reply, code, log: await server.stderr.ended() };
    };

    test("008 (previous stage) drops the replies still queued", async () => {
      const { reply, code, log } = await signalWhileOwed(PREVIOUS);
      expect(code).toBe(0);
      expect(reply.length).toBeLessThan(request.length);
      expect(log).toContain("closed 1 client(s); bye");
    });

    test("009 delivers every byte it read before the signal, then exits 0", async () => {
      const { reply, code, log } = await signalWhileOwed(STAGE);
      expect(code).toBe(0);
      // The server may not have read the last of the 32 MiB when the signal came: a prefix, and most of it.
      expect(reply.length).toBeGreaterThan(16 * MiB);
      expect(sameBytes(reply, upperAscii(request).subarray(0, reply.length))).toBe(true);
      expect(log).toContain(
        "shutdown complete: 1 client(s) drained, 0 cut; since start 1 served, 0 refused, " +
          `${reply.length} bytes received and ${reply.length} sent back`,
      );
    });
  });

  hardenedEchoTests({ file: STAGE });
});
