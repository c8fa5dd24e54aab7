import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests, payload, sameBytes } from "../test/support/echo-hardened.ts";
import { TestClient, upperAscii } from "../test/support/net.ts";
import { startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/007-half-close.ts";
const PREVIOUS = "tcp_echo_server/006-write-queue.ts";
const MiB = 1024 * 1024;

describe("007 half-close", () => {
  echoContractTests({ file: STAGE, args: ["--port", "0"] });
  hostileContractTests({ file: STAGE, kind: "echo", args: ["--port", "0"] });

  // The lesson: a client sends 32 MiB, then FIN, and reads only afterwards. The server has read everything (its
  // --max-buffer is 64 MiB) and holds most of the reply in its queue when the FIN arrives. 006 is closed by Bun at
  // that moment and the queued part is lost; 007 flushes it, then closes.
  describe("32 MiB, then FIN, read only afterwards", () => {
    const request = payload(32 * MiB, 3);
    const sendThenFin = async (file: string): Promise<{ reply: Uint8Array; log: string }> => {
      await using server = await startStage(file, ["--port", "0", "--max-buffer", "64m"]);
      const client = await TestClient.connect(server.port);
      client.pauseReading();
      client.write(request);
      await client.shutdown();
      await server.waitForLog(/client closed its side \(FIN\)/);
      client.resumeReading();
      const reply = await client.readToEnd(20_000);
      await server.waitForLog(/done: received/);
      return { reply, log: server.stderr.text };
    };

    test("006 (previous stage) loses the part of the reply still queued", async () => {
      const { reply, log } = await sendThenFin(PREVIOUS);
      expect(reply.length).toBeLessThan(request.length);
      expect(log).toMatch(/done: received 33554432 bytes, sent \d+, \d+ reply bytes undelivered/);
    });

    test("007 delivers all of it, then closes", async () => {
      const { reply, log } = await sendThenFin(STAGE);
      expect(reply.length).toBe(request.length);
      expect(sameBytes(reply, upperAscii(request))).toBe(true);
      expect(log).toMatch(/client closed its side \(FIN\): flushing \d+ queued bytes first/);
      expect(log).toMatch(/done: received 33554432 bytes, sent 33554432\n/);
    });
  });

  test("a client that FINs with nothing queued is closed at once", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
    const client = await TestClient.connect(server.port);
    client.write("bye");
    await client.readAtLeast(3);
    await client.shutdown();
    expect(await client.endsWithin(2000)).toBe(true);
    await server.waitForLog(/client closed its side \(FIN\)\n.*done: received 3 bytes, sent 3\n/);
  });

  hardenedEchoTests({ file: STAGE, features: { halfClose: true, limits: false, drain: false } });
});
