import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests, payload, sameBytes } from "../test/support/echo-hardened.ts";
import { decode, TestClient, upperAscii } from "../test/support/net.ts";
import { runToExit, startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/006-write-queue.ts";
const PREVIOUS = "tcp_echo_server/005-bounded-concurrency.ts";
const MiB = 1024 * 1024;

describe("006 a write queue", () => {
  test("the log states the reply queue per client; -h lists --max-buffer; a bad size is a usage error", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "1m"]);
    expect(server.stdout.text).toBe(`listening on 127.0.0.1:${server.port}\n`);
    await server.waitForLog(
      /listening on 127\.0\.0\.1:\d+ \(at most 100 clients at once, 1 MiB reply queue per client, idle timeout 60 s\)/,
    );
    const help = await runToExit(STAGE, ["-h"]);
    expect([help.code, help.stdout]).toEqual([0, expect.stringContaining("--max-buffer BYTES")]);
    expect(await runToExit(STAGE, ["--max-buffer", "lots"])).toEqual({
      code: 2,
      stdout: "",
      stderr:
        'error: --max-buffer must be a positive number of bytes (k, m suffixes allowed), got "lots" (see --help)\n',
    });
  });

  echoContractTests({ file: STAGE, args: ["--port", "0"] });

  hostileContractTests({ file: STAGE, kind: "echo", args: ["--port", "0"], halfClose: "prefix" });

  // The lesson: a client that sends a lot before it reads. Bun's write() takes what fits in the kernel and drops
  // the rest unless the server keeps it. 005 does not: the reply comes back short, and the server closes the idle
  // connection after 1 s. 006 queues the rest and pauses the client's reading while the queue is full, so every
  // byte comes back, in order.
  // (32 MiB: on loopback the kernel buffers of the two ends can hold about 10 MiB between them.)
  describe("32 MiB sent by a client that reads only afterwards", () => {
    const request = payload(32 * MiB);

    test("005 (previous stage) loses reply bytes", async () => {
      await using server = await startStage(PREVIOUS, ["--port", "0", "--idle-timeout", "1"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await client.flushed(); // 005 read it all, writing each reply once whatever the kernel took
      client.resumeReading();
      const reply = await client.readToEnd();
      expect(reply.length).toBeLessThan(request.length);
    });

    test("006 returns every byte, in order, and says so when the connection ends", async () => {
      await using server = await startStage(STAGE, ["--port", "0", "--idle-timeout", "1", "--log-level", "debug"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await server.waitForLog(/reply queue at \d+ bytes, over --max-buffer: pausing its reading/);
      client.resumeReading();
      const reply = await client.readToEnd(20_000); // the idle timeout closes it once all is sent
      expect(reply.length).toBe(request.length);
      expect(sameBytes(reply, upperAscii(request))).toBe(true);
      await server.waitForLog(/reply queue down to \d+ bytes: reading again/);
      await server.waitForLog(new RegExp(`done: received ${request.length} bytes, sent ${request.length}\\n`));
    });
  });

  test("the semaphore of 005 is unchanged: over --max-clients a client waits, with its bytes kept", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-clients", "1"]);
    const first = await TestClient.connect(server.port);
    await server.waitForLog(/\[conn 1 \| active 1\/1\] serving/);
    const second = await TestClient.connect(server.port);
    second.write("my turn");
    await server.waitForLog(/\[conn 2 \| active 1\/1\] from 127\.0\.0\.1: all 1 slots taken, waiting/);
    first.close();
    expect(decode(await second.readAtLeast(7))).toBe("MY TURN");
  });

  test("a client that leaves with replies queued: the last line counts what was left undelivered", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "1m", "--log-level", "debug"]);
    const client = await TestClient.connect(server.port);
    client.pauseReading();
    client.write(payload(8 * MiB));
    await server.waitForLog(/over --max-buffer: pausing its reading/); // over 1 MiB queued: now leave
    client.reset();
    const [, received, sent, left] = (await server.waitForLog(
      /done: received (\d+) bytes, sent (\d+), (\d+) reply bytes undelivered/,
    ))!;
    expect(Number(sent) + Number(left)).toBe(Number(received));
    expect(Number(left)).toBeGreaterThan(0);
  });

  hardenedEchoTests({ file: STAGE, features: { halfClose: false, limits: false, drain: false } });
});
