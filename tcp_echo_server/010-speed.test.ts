import { describe, expect, test } from "bun:test";
import { echoContractTests } from "../test/support/echo-contract.ts";
import { hostileContractTests } from "../test/support/hostile-contract.ts";
import { hardenedEchoTests, payload, sameBytes } from "../test/support/echo-hardened.ts";
import { concatBytes, encode, TestClient, upperAscii } from "../test/support/net.ts";
import { startStage } from "../test/support/process.ts";

const STAGE = "tcp_echo_server/010-speed.ts";
const MiB = 1024 * 1024;

// Speed itself is measured by `bun run bench`, not by tests. What the tests hold 010 to is that going faster
// changed nothing a client can see: the in-place, four-bytes-at-a-time uppercase and the batched writes return
// exactly the bytes 009 returns, in order, and the debug lines are still there when asked for.
describe("010 speed", () => {
  echoContractTests({ file: STAGE, args: ["--port", "0"] });
  hostileContractTests({ file: STAGE, kind: "echo", args: ["--port", "0"] });

  test("chunks of every length around the SWAR threshold and the word boundaries come back exact", async () => {
    await using server = await startStage(STAGE, ["--port", "0"]);
    const lengths = [1, 2, 3, 4, 5, 7, 63, 64, 65, 252, 253, 254, 255, 256, 257, 258, 259, 260, 1021, 4099, 65_537];
    for (const [index, length] of lengths.entries()) {
      // One connection per length, and one write: the server gets the chunk (or its pieces) at that length.
      const request = payload(length, index + 1);
      const client = await TestClient.connect(server.port);
      client.write(request);
      const reply = await client.readAtLeast(length);
      expect(reply.length).toBe(length);
      expect(sameBytes(reply, upperAscii(request))).toBe(true);
      client.close();
    }
  });

  test("small replies queued behind a big one come back whole and in order (batched into one write)", async () => {
    await using server = await startStage(STAGE, ["--port", "0", "--max-buffer", "64m", "--log-level", "debug"]);
    const client = await TestClient.connect(server.port);
    client.pauseReading();
    let logFrom = 0;
    /** Waits until the server's "received N bytes" lines add up to `bytes` more. */
    const serverRead = async (bytes: number): Promise<void> => {
      for (let read = 0; read < bytes; ) {
        const match = (await server.waitForLog(/received (\d+) bytes\n/, 10_000, logFrom))!;
        logFrom += match.index! + match[0].length;
        read += Number(match[1]);
      }
    };
    // 16 MiB first: the kernel buffers fill, and the rest of that reply waits in the server's queue.
    const big = payload(16 * MiB, 4);
    client.write(big);
    await serverRead(big.length);
    // Then 300 small messages, each read by the server on its own: 300 small chunks queued behind the big ones.
    const small = Array.from({ length: 300 }, (_, i) => encode(`message ${i}\n`));
    for (const message of small) {
      client.write(message);
      await serverRead(message.length);
    }
    const request = concatBytes([big, ...small]);
    client.resumeReading();
    const reply = await client.readAtLeast(request.length, 20_000);
    expect(reply.length).toBe(request.length);
    expect(sameBytes(reply, upperAscii(request))).toBe(true);
  });

  test("debug lines are only skipped when the level is off: socket options and reads are logged at debug", async () => {
    for (const level of ["debug", "info"]) {
      await using server = await startStage(STAGE, ["--port", "0", "--log-level", level]);
      const client = await TestClient.connect(server.port);
      client.write("trace me");
      await client.readAtLeast(8);
      client.close();
      await server.waitForLog(/done: received 8 bytes, sent 8/);
      const log = server.stderr.text;
      expect(/\[conn 1 \| active \d+\/\d+\] socket options: SO_REUSEADDR=\d/.test(log)).toBe(level === "debug");
      expect(log.includes("received 8 bytes\n")).toBe(level === "debug");
    }
  });

  hardenedEchoTests({ file: STAGE });
});
