import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hardenedEchoTests, payload, sameBytes } from "../test/support/echo-hardened.ts";
import { TestClient, upperAscii } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/009-draining-shutdown.ts";
const PREVIOUS = "tcp_echo_server/005-bounded-concurrency.ts";
const MiB = 1024 * 1024;

describe("006 correct under any client", () => {
  test("--port 0 prints one listening line; the log states the limits in force", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-per-ip", "3", "--max-buffer", "1m"]);
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
    await server.waitForLog(
      /listening on 127\.0\.0\.1:\d+ \(at most 10000 clients at once, 3 per address, 1 MiB reply queue per client, idle timeout 60 s, drain timeout 8 s\)/,
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

  // The lesson: a client that sends a lot before reading. Bun's write() takes what fits in the kernel and drops
  // the rest unless the server keeps it. 005 does not: its reply comes back short. 006 queues it and pauses the
  // client's reading while the queue is full, so every byte comes back, in order.
  describe("partial writes: 8 MiB sent by a client that reads only afterwards", () => {
    const request = payload(8 * MiB);

    test("005 (previous stage) loses reply bytes", async () => {
      await using server = await startStage(PREVIOUS, ["--port", "0"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await client.shutdown();
      await server.waitForLog(/client closed its side \(FIN\)/); // 005 read it all, dropping what did not fit
      client.resumeReading();
      const reply = await client.readToEnd();
      expect(reply.length).toBeLessThan(request.length);
    });

    test("006 returns every byte, in order", async () => {
      await using server = await startStage(STAGE, ["--port", "0", "--log-level", "debug"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await server.waitForLog(/over --max-buffer: pausing its reading/);
      client.resumeReading();
      await client.shutdown();
      const reply = await client.readToEnd(20_000);
      expect(reply.length).toBe(request.length);
      expect(sameBytes(reply, upperAscii(request))).toBe(true);
    });
  });

  hardenedEchoTests({ file: STAGE });
});
